"""CPU-only tests of the benchmark CLI (flash256.bench): no GPU, no flash256 kernels (fake backends)."""
import argparse
import dataclasses
import json

import pytest
import torch

from flash256.bench import backends as bk
from flash256.bench import check as chk
from flash256.bench import cli, report, run
from flash256.bench.flops import attention_flops, visible_pairs
from flash256.bench.records import OK, UNSUPPORTED, WRONG, Measurement, Shape
from flash256.reference import attention_ref, visibility_mask

# ------------------------------------------------------------------ fake backends


def _ref_forward(q, k, v, shape, deterministic):
    return lambda: attention_ref(q, k, v, causal=shape.causal, window_size=shape.window, softcap=shape.softcap,
                                 upcast=True)[0].to(q.dtype)


def _bad_forward(q, k, v, shape, deterministic):
    good = _ref_forward(q, k, v, shape, deterministic)
    return lambda: good() + 0.25


def _raising(exc):
    def build(q, k, v, shape, deterministic):
        def fwd():
            raise exc
        return fwd
    return build


def _available(device):
    return None


FAKES = {
    "fake-flash256": bk.Backend("fake-flash256", "correct, counts as flash256", True, _available, _ref_forward),
    "fake-good": bk.Backend("fake-good", "correct", False, _available, _ref_forward),
    "fake-bad": bk.Backend("fake-bad", "wrong answers", False, _available, _bad_forward),
    "fake-boom": bk.Backend("fake-boom", "raises", False, _available, _raising(RuntimeError("kaboom"))),
    "fake-oom": bk.Backend("fake-oom", "out of memory", False, _available,
                           _raising(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate"))),
    "fake-missing": bk.Backend("fake-missing", "not installed", False, lambda d: "not installed here",
                               _ref_forward),
}

SMALL = ["--device", "cpu", "--headdim", "16", "--nheads", "2", "--seqlen", "32,64", "--total-seqlen", "128",
         "--warmup", "0", "--rep", "0", "--min-reps", "1", "--max-reps", "2"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny CPU tensors: one thread avoids thread-pool contention on busy machines (10x faster)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fakes(monkeypatch):
    for name, b in FAKES.items():
        monkeypatch.setitem(bk.BACKENDS, name, b)
    return FAKES


def sweep(args, names, **kw):
    cfg = cli.parse_args(SMALL + args)
    result = run.Sweep(cfg, [FAKES[n] for n in names], reference=chk.local_attention_ref, **kw).run()
    return cfg, result


def cell(result, backend, direction="fwd", seqlen=32, causal=False):
    (m,) = [m for m in result.measurements if m.backend == backend and m.direction == direction
            and m.shape.seqlen_k == seqlen and m.shape.causal == causal]
    return m


# ------------------------------------------------------------------ argument parsing


@pytest.mark.parametrize("text,value", [("4096", 4096), ("1k", 1024), ("32K", 32768), ("128k", 131072),
                                        ("1m", 1 << 20)])
def test_parse_size(text, value):
    assert cli.parse_size(text) == value


@pytest.mark.parametrize("text", ["k", "1.5k", "-1", "0", "abc"])
def test_parse_size_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_size(text)


def test_parse_defaults():
    cfg = cli.parse_args([])
    assert cfg.directions == ("fwd",)
    assert cfg.headdims == (256,)
    assert cfg.seqlens == (1024, 2048, 4096, 8192, 16384, 32768)
    assert cfg.seqlens_q == cfg.seqlens
    assert cfg.causal == (False, True)
    assert cfg.heads_for(256) == (8, 8)
    assert cfg.heads_for(128) == (16, 16)
    assert cfg.dtype == "bf16" and cfg.backends is None
    assert cfg.command.startswith("python -m flash256.bench")
    # long enough for a power-capped GPU to settle at its sustained clock before a cell is timed (NOTES.md)
    assert cfg.warmup_ms == 250 and cfg.rep_ms == 100


@pytest.mark.parametrize("flag,expected", [("true", (True,)), ("false", (False,)), ("both", (False, True)),
                                           ("BOTH", (False, True))])
def test_parse_causal(flag, expected):
    assert cli.parse_args(["--causal", flag]).causal == expected


def test_parse_causal_rejects():
    with pytest.raises(SystemExit):
        cli.parse_args(["--causal", "maybe"])


def test_parse_lists_and_directions():
    cfg = cli.parse_args(["--bwd", "--fwd", "--seqlen", "1k,2k,64k,128k", "--headdim", "64,128,256",
                          "--backend", "flash256-sm90, sdpa-cudnn", "--dtype", "fp16", "--deterministic"])
    assert cfg.directions == ("fwd", "bwd")
    assert cfg.seqlens == (1024, 2048, 65536, 131072)
    assert cfg.headdims == (64, 128, 256)
    assert cfg.backends == ("flash256-sm90", "sdpa-cudnn")
    assert cfg.dtype == "fp16" and cfg.deterministic and not cfg.fwd_grad
    assert cli.parse_args(["--fwd-grad"]).fwd_grad
    assert cli.parse_args(["--bwd"]).directions == ("bwd",)


def test_gqa_ratio_and_nheads_kv():
    cfg = cli.parse_args(["--gqa-ratio", "4"])
    assert cfg.heads_for(256) == (8, 2)
    assert cfg.heads_for(64) == (32, 8)
    assert cli.parse_args(["--nheads", "16", "--nheads-kv", "1"]).heads_for(256) == (16, 1)
    with pytest.raises(SystemExit):  # 8 heads are not a multiple of 3 kv heads
        cli.parse_args(["--nheads-kv", "3"])
    with pytest.raises(SystemExit):  # mutually exclusive
        cli.parse_args(["--nheads-kv", "2", "--gqa-ratio", "4"])


def test_seqlen_q_broadcast():
    assert cli.parse_args(["--seqlen", "1k,2k", "--seqlen-q", "512"]).seqlens_q == (512, 512)
    assert cli.parse_args(["--seqlen", "1k,2k", "--seqlen-q", "1,2"]).seqlens_q == (1, 2)
    with pytest.raises(SystemExit):
        cli.parse_args(["--seqlen", "1k,2k,4k", "--seqlen-q", "1,2"])


def test_batch_from_total_seqlen():
    cfg = cli.parse_args(["--total-seqlen", "32k"])
    assert [cfg.batch_for(s) for s in (1024, 4096, 32768, 65536, 131072)] == [32, 8, 1, 1, 1]
    assert cli.parse_args(["--total-seqlen", "32k", "--batch-size", "3"]).batch_for(1024) == 3
    shapes = run.shapes_for(cli.parse_args(["--seqlen", "1k,128k", "--gqa-ratio", "2"]), 256)
    assert [(s.batch, s.seqlen_k, s.nheads, s.nheads_kv) for s in shapes] == [(32, 1024, 8, 4),
                                                                             (1, 131072, 8, 4)]


# ------------------------------------------------------------------ FLOPs


def _brute_pairs(sq, sk, causal):
    i = torch.arange(sq)[:, None]
    j = torch.arange(sk)[None, :]
    return int((j <= i + sk - sq).sum()) if causal else sq * sk


@pytest.mark.parametrize("causal", [False, True])
def test_visible_pairs_brute_force(causal):
    for sq in range(1, 18):
        for sk in range(1, 18):
            assert visible_pairs(sq, sk, causal) == _brute_pairs(sq, sk, causal), (sq, sk)
    for sq, sk in [(1000, 3000), (3000, 1000), (4096, 4096), (1, 8192)]:
        assert visible_pairs(sq, sk, causal) == _brute_pairs(sq, sk, causal)


def test_flops_formula():
    s = Shape(batch=4, seqlen_q=1024, seqlen_k=1024, nheads=8, nheads_kv=8, headdim=256, causal=False,
              dtype="bf16")
    assert attention_flops(s) == 4 * 4 * 8 * 1024 * 1024 * 256
    assert attention_flops(s, "bwd") == 2.5 * attention_flops(s)
    c = dataclasses.replace(s, causal=True)
    assert attention_flops(c) == 4 * 4 * 8 * 256 * (1024 * 1025 // 2)
    with pytest.raises(ValueError):
        attention_flops(s, "sideways")


# ------------------------------------------------------------------ tables and ratios


def _m(backend, tflops, status=OK, seqlen=1024, checked="yes", direction="fwd"):
    shape = Shape(32, seqlen, seqlen, 8, 8, 256, False, "bf16")
    return Measurement(backend, direction, shape, status, ms=1.0 if tflops else None, tflops=tflops,
                       reps=10, checked=checked)


def test_tables_and_ratios():
    ms = [_m("flash256-sm90", 750.0), _m("sdpa-cudnn", 600.0), _m("sdpa-flash", 300.0, status=WRONG,
                                                                     checked=WRONG),
          _m("flash256-sm90", 800.0, seqlen=2048), _m("sdpa-cudnn", None, status="err: OOM", seqlen=2048),
          _m("sdpa-flash", 320.0, seqlen=2048)]
    t = report.Tables(ms, ["flash256-sm90", "sdpa-cudnn", "sdpa-flash"])
    (g,) = t.groups(("fwd",), (256,), (False,))
    values = t.values(g, "tflops")
    lines = values.splitlines()
    assert lines[0].split("|")[1].strip() == "seqlen"
    assert [c.strip() for c in lines[2].split("|")[1:-1]] == ["1k", "32", "750", "600", "WRONG (300)"]
    assert [c.strip() for c in lines[3].split("|")[1:-1]] == ["2k", "32", "800", "err: OOM", "320"]
    ratios = t.ratios(g).splitlines()
    assert "flash256-sm90/sdpa-cudnn" in ratios[0] and "flash256-sm90/sdpa-flash" in ratios[0]
    assert [c.strip() for c in ratios[2].split("|")[1:-1]] == ["1k", "1.25", "-"]  # WRONG never ranked
    assert [c.strip() for c in ratios[3].split("|")[1:-1]] == ["2k", "-", "2.50"]
    assert "1.000" in t.values(g, "ms")
    # every row of a markdown table has the same width
    assert len({len(x) for x in lines}) == 1


def test_no_ratio_table_without_flash256():
    t = report.Tables([_m("sdpa-cudnn", 600.0)], ["sdpa-cudnn"])
    (g,) = t.groups(("fwd",), (256,), (False,))
    assert t.ratios(g) is None


def test_classify_error():
    assert run.classify_error(torch.cuda.OutOfMemoryError("CUDA out of memory"))[0] == "err: OOM"
    assert run.classify_error(NotImplementedError("no"))[0] == "unsupported"
    assert run.classify_error(RuntimeError("No available kernel. Aborting execution."))[0] == "unsupported"
    assert run.classify_error(ValueError("bad"))[0] == "err: ValueError"


# ------------------------------------------------------------------ checks


@pytest.mark.parametrize("sq,sk", [(96, 160), (160, 96), (128, 128)])
@pytest.mark.parametrize("causal", [False, True])
def test_slice_check(sq, sk, causal):
    shape = Shape(2, sq, sk, 2, 1, 16, causal, "bf16")
    q, k, v, _ = chk.make_inputs(shape, "cpu", requires_grad=False)
    out = chk.local_attention_ref(q, k, v, causal=causal)[0].to(q.dtype)
    blocks = chk.slice_blocks(shape, rows=32)
    assert blocks and all(r1 - r0 == 32 for _, r0, r1, _ in blocks)
    first_visible = max(0, sq - sk) if causal else 0
    assert blocks[0][:2] == (0, first_visible) and blocks[-1][:3] == (1, sq - 32, sq)
    assert chk.slice_check("x", out, q, k, v, shape, rows=32).status == OK
    bad = out.clone()
    bad[-1, -1] += 0.5  # last row of the last batch: inside the second block
    assert chk.slice_check("x", bad, q, k, v, shape, rows=32).status == WRONG
    bad = out.clone()
    bad[0, first_visible + 31] -= 0.5  # inside the first block
    assert chk.slice_check("x", bad, q, k, v, shape, rows=32).status == WRONG


def test_full_check_catches_wrong_gradients():
    shape = Shape(1, 64, 64, 2, 2, 16, True, "bf16")

    def wrong_grad(q, k, v, shape, deterministic):
        # right forward, but the gradient of k is scaled by 2 through a straight-through trick
        def fwd():
            k2 = k + (k - k.detach())
            return chk.local_attention_ref(q, k2, v, causal=shape.causal)[0].to(q.dtype)
        return fwd

    b = bk.Backend("wg", "", False, _available, wrong_grad)
    res = chk.full_check(b, shape, "cpu", False, with_bwd=True, reference=chk.local_attention_ref)
    assert res.status == WRONG and res.failed_tensors() == ["dk"]
    ok = chk.full_check(FAKES["fake-good"], shape, "cpu", False, True, chk.local_attention_ref)
    assert ok.status == OK and set(ok.errors) == {"out", "dq", "dk", "dv"}


def test_check_shape_is_small():
    s = Shape(32, 1024, 131072, 8, 8, 256, True, "bf16")
    c = chk.check_shape_for(s)
    assert (c.batch, c.seqlen_q, c.seqlen_k, c.headdim, c.causal) == (2, 1024, 2048, 256, True)


# ------------------------------------------------------------------ the sweep with fake backends


ALL_FAKES = ["fake-flash256", "fake-good", "fake-bad", "fake-boom", "fake-oom", "fake-missing"]


@pytest.fixture(scope="module")
def big_sweep(one_thread):
    """fwd + bwd, causal both, GQA 2:1, every fake backend (shared by the tests below)."""
    return sweep(["--fwd", "--bwd", "--causal", "both", "--gqa-ratio", "2"], ALL_FAKES)


def test_sweep_failures_become_cells(big_sweep):
    names = ALL_FAKES
    cfg, result = big_sweep
    assert len(result.measurements) == 2 * 2 * len(names) * 2  # seqlens x causal x backends x directions
    for causal in (False, True):
        for d in ("fwd", "bwd"):
            for s in (32, 64):
                good = cell(result, "fake-good", d, s, causal)
                assert good.status == OK and good.checked == "yes" and good.tflops > 0
                assert good.flops == attention_flops(good.shape, d)
                assert cell(result, "fake-bad", d, s, causal).status == WRONG
                assert cell(result, "fake-boom", d, s, causal).status == "err: RuntimeError"
                assert cell(result, "fake-oom", d, s, causal).status == "err: OOM"
                missing = cell(result, "fake-missing", d, s, causal)
                assert missing.status == "n/a" and missing.note == "not installed here"
    assert result.unavailable == {"fake-missing": "not installed here"}
    # one full check per (backend, headdim, causal) for the backends that are available
    full = [c for c in result.checks if c.kind == "full"]
    assert len(full) == 2 * 5
    assert cell(result, "fake-good").shape.nheads_kv == 1


def test_sweep_rotates_backend_order(big_sweep):
    """Case i (a seqlen and causal pair) times the backends starting from the i-th, both directions each."""
    _cfg, result = big_sweep
    per_case = 2 * len(ALL_FAKES)
    cases = [result.measurements[i:i + per_case] for i in range(0, len(result.measurements), per_case)]
    assert len(cases) == 4
    for i, case in enumerate(cases):
        assert len({(m.shape.seqlen_k, m.shape.causal) for m in case}) == 1
        order = [m.backend for m in case[::2]]
        assert order == ALL_FAKES[i:] + ALL_FAKES[:i]


def test_time_budget_skips(monkeypatch):
    cfg, result = sweep(["--time-budget", "0"], ["fake-good"])
    assert {m.status for m in result.measurements} == {"skipped"}


def test_report_json_plot(tmp_path, big_sweep):
    names = ALL_FAKES
    cfg, result = big_sweep
    env = {"date": "2026-01-01T00:00:00+00:00", "command": cfg.command,
           "gpu": {"name": "FakeGPU", "sm_count": 1, "nvidia_smi": {"clocks.max.sm": "1980 MHz"}},
           "versions": {"torch": torch.__version__, "triton": "x"}}
    backends = [FAKES[n] for n in names]
    text = report.markdown_report(cfg, env, backends, result)
    assert "python -m flash256.bench" in text and "FakeGPU" in text and "2026-01-01" in text
    assert "### fwd, headdim 16, causal: TFLOP/s" in text and "### bwd, headdim 16, causal: ratios" in text
    assert "### bwd, headdim 16, non-causal: ms" in text and "err: OOM" in text
    assert "fake-flash256/fake-good" in text and "WRONG (" in text and "err: RuntimeError" in text
    assert "fake-missing: n/a, not installed here" in text

    path = tmp_path / "bench.json"
    report.write_json(str(path), cfg, env, backends, result)
    doc = json.loads(path.read_text())
    assert doc["schema"] == report.SCHEMA and doc["complete"] is True
    assert doc["env"]["gpu"]["name"] == "FakeGPU" and doc["command"] == cfg.command
    assert len(doc["measurements"]) == len(result.measurements)
    m = doc["measurements"][0]
    assert set(m) >= {"backend", "direction", "shape", "status", "ms", "tflops", "flops", "reps", "checked"}
    assert set(m["shape"]) == {f.name for f in dataclasses.fields(Shape)}
    assert {c["kind"] for c in doc["checks"]} == {"full", "slice"}
    assert doc["config"]["seqlens"] == [32, 64]
    assert [b["name"] for b in doc["backends"]] == names

    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    assert report.plot(str(png), cfg, env, backends, result) is None
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_cli_main_end_to_end(tmp_path, fakes, capsys):
    js, md, png = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png"
    rc = cli.main(SMALL + ["--bwd", "--backend", "fake-flash256,fake-good,fake-boom", "--causal", "false",
                           "--json", str(js), "--markdown", str(md), "--plot", str(png)])
    assert rc == 0
    out, err = capsys.readouterr()
    assert "## flash256 benchmark" in out and "fake-flash256/fake-good" in out
    assert "[   1/" in err  # progress on stderr
    assert md.read_text().strip() == out.strip()
    doc = json.loads(js.read_text())
    assert doc["complete"] and {m["status"] for m in doc["measurements"]} == {"ok", "err: RuntimeError"}
    assert "versions" in doc["env"] and doc["env"]["date"]
    assert png.exists() == _has_matplotlib()


def test_cli_unknown_backend(capsys):
    assert cli.main(["--device", "cpu", "--backend", "nope"]) == 2
    assert "unknown backend" in capsys.readouterr().err


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def test_exp2_sweep_backend_names():
    from flash256.bench.backends import get_backend
    b = get_backend("flash256-sm90:exp2=2")
    assert b.name == "flash256-sm90:exp2=2" and b.is_flash256 and "2/8" in b.description
    assert get_backend("flash256:exp2=0").name == "flash256:exp2=0"
    with pytest.raises(KeyError):
        get_backend("sdpa-cudnn:exp2=2")
    with pytest.raises(KeyError):
        get_backend("flash256:exp2=x")


# ------------------------------------------------------------------ sliding window and softcap (Gemma-2 layers)


@pytest.mark.parametrize("window", [(3, 0), (2, 4), (-1, 2), (0, -1), (0, 0), (5, -1)])
@pytest.mark.parametrize("causal", [False, True])
def test_visible_pairs_with_window(window, causal):
    for sq, sk in [(1, 1), (5, 9), (9, 5), (17, 17), (40, 13)]:
        expected = int(visibility_mask(sq, sk, causal, window).sum())
        assert visible_pairs(sq, sk, causal, window) == expected, (sq, sk)
    s = Shape(2, 4096, 4096, 8, 4, 256, True, "bf16", window=(1024, 0))
    # row i sees min(i, 1024) + 1 keys
    assert attention_flops(s) == 4 * 2 * 8 * 256 * (sum(range(1, 1025)) + (4096 - 1024) * 1025)


def test_parse_window_and_softcap():
    cfg = cli.parse_args(["--window-size", "4096,0", "--softcap", "50"])
    assert cfg.window == (4096, 0) and cfg.softcap == 50.0
    assert cli.parse_args([]).window == (-1, -1) and cli.parse_args([]).softcap == 0.0
    shape = run.shapes_for(cfg, 256)[0]
    assert shape.window == (4096, 0) and shape.softcap == 50.0
    assert "window=4096,0 softcap=50" in shape.describe()
    for bad in (["--window-size", "4096"], ["--window-size", "-2,0"], ["--window-size", "a,b"],
                ["--softcap", "-1"], ["--softcap", "nan"]):
        with pytest.raises(SystemExit):
            cli.parse_args(bad)


@pytest.mark.parametrize("window,causal,both_blocks", [((8, 0), True, True), ((8, 0), False, True),
                                                       ((8, 8), False, False), ((-1, 3), False, False),
                                                       ((8, 8), True, True)])
def test_slice_check_with_window(window, causal, both_blocks):
    """Windows keep the reference on a row slice exact: both blocks when no row sees keys right of its
    diagonal, else only the last rows (whose keys are all of them)."""
    shape = Shape(2, 96, 160, 2, 1, 16, causal, "bf16", window=window, softcap=5.0)
    q, k, v, _ = chk.make_inputs(shape, "cpu", requires_grad=False)
    out = attention_ref(q, k, v, causal=causal, window_size=window, softcap=5.0)[0]
    blocks = chk.slice_blocks(shape, rows=32)
    assert len(blocks) == (2 if both_blocks else 1) and blocks[-1][1:] == (64, 96, 160)
    assert chk.slice_check("x", out, q, k, v, shape, reference=attention_ref, rows=32).status == OK
    plain = attention_ref(q, k, v, causal=causal)[0]  # the same problem without window and softcap
    assert chk.slice_check("x", plain, q, k, v, shape, reference=attention_ref, rows=32).status == WRONG


def test_sweep_with_window_and_softcap(one_thread):
    """A Gemma-2-like sweep: windowed FLOPs, the check with window and softcap, and backends that lack
    an option show 'unsupported' instead of a time."""
    def plain_only(q, k, v, shape, deterministic):
        bk._plain_only(shape, "plain-only backend")
        return _ref_forward(q, k, v, shape, deterministic)

    backends = [FAKES["fake-flash256"], FAKES["fake-bad"],
                bk.Backend("plain-only", "no window, no softcap", False, _available, plain_only)]
    cfg = cli.parse_args(SMALL + ["--fwd", "--bwd", "--causal", "true", "--window-size", "16,0", "--softcap", "5"])
    result = run.Sweep(cfg, backends, reference=attention_ref).run()
    for d in ("fwd", "bwd"):
        good = cell(result, "fake-flash256", d, 64, True)
        assert good.status == OK and good.checked == "yes" and good.shape.window == (16, 0)
        assert good.flops == attention_flops(good.shape, d) < attention_flops(
            dataclasses.replace(good.shape, window=(-1, -1)), d)
        assert cell(result, "fake-bad", d, 64, True).status == WRONG
        assert cell(result, "plain-only", d, 64, True).status == UNSUPPORTED
    text = report.markdown_report(cfg, {"date": "d", "command": cfg.command, "gpu": {}, "versions": {}},
                                  backends, result)
    assert "sliding window (left, right) = (16, 0), softcap 5" in text


def test_sdpa_refuses_window_and_softcap():
    q = k = v = torch.zeros(1, 8, 1, 16)
    for shape in (Shape(1, 8, 8, 1, 1, 16, True, "bf16", window=(4, 0)), Shape(1, 8, 8, 1, 1, 16, False, "bf16",
                                                                                softcap=30.0)):
        with pytest.raises(NotImplementedError, match="no sliding window / softcap"):
            bk.get_backend("sdpa-cudnn").build(q, k, v, shape, False)
