import json
import subprocess
import sys

from shared_attention.bench_overhead import measure_overhead


def test_measure_overhead_reports_every_variant():
    result = measure_overhead(iters=5, warmup=1, repeats=1)
    assert set(result["us_per_call"]) == {
        "sdpa_direct",
        "attention_sdpa",
        "attention_auto",
        "sdpa_direct_causal",
        "attention_auto_causal",
    }
    assert all(t > 0 for t in result["us_per_call"].values())
    assert set(result["overhead_us"]) == {"attention_sdpa", "attention_auto", "attention_auto_causal"}


def test_bench_script_writes_json(tmp_path):
    out = tmp_path / "overhead.json"
    code = (
        "import sys; from shared_attention import bench_overhead as b; "
        "sys.argv = ['b', sys.argv[1]]; b.main(iters=5, warmup=1, repeats=1)"
    )
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=120)
    assert json.loads(out.read_text())["shape"] == {"B": 1, "H": 4, "L": 64, "D": 32}
