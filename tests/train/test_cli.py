"""`python -m glm_jax.train`: flags and config overrides reach the loop; bad values fail first."""

from tests import cli


def test_cli_reports_a_config_error_naming_the_field(tmp_path):
    proc = cli.run("-m", "glm_jax.train", "--config=configs/debug.py", f"--workdir={tmp_path}", "--config.mesh.data=3",
                   "--config.mesh.fsdp=1", timeout=120, check=False)
    assert proc.returncode != 0
    assert "config field `mesh`" in proc.stderr and "8 devices" in proc.stderr
    assert not (tmp_path / "config.json").exists()  # refused before anything is written
