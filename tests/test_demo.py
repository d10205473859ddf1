"""etl.demo: --demo serves the bundled sample offline, with a 503 first."""
import json

from conftest import ROOT, cli

from etl.records import transform_records


def test_demo_retries_once_and_writes_the_sample(tmp_path):
    out = tmp_path / "out" / "demo.json"
    result = cli("--demo", "--output", out)
    assert result.returncode == 0, result.stderr
    assert "Task 'extract': Finished task run for task with final state: 'Retrying'" in result.stdout
    assert "Flow run SUCCESS" in result.stdout
    sample = json.loads((ROOT / "sample" / "todos.json").read_text(encoding="utf-8"))
    assert len(sample) == 200
    assert out.read_bytes() == (ROOT / "datos.json").read_bytes()
    assert json.loads(out.read_text(encoding="utf-8")) == transform_records(sample)
