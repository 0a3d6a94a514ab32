"""labkit.runner's refusals of bad notebooks and run folders, before any kernel starts."""

from __future__ import annotations

import nbformat
import pytest

from labkit.cli import main
from labkit.errors import InvalidInput
from labkit.runner import _checked_notebook, run, run_grid


def _notebook(path, kernelspec: bool = True):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('API_KEY = ""\nN = 1')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("print(N)")]
    if kernelspec:
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_a_notebook_without_a_kernelspec_has_its_parameters_read(tmp_path):
    # a notebook written by a script often has no metadata.kernelspec: papermill's
    # inspect_notebook then failed ("No kernel name found") before anything ran
    nb = _notebook(tmp_path / "bare.ipynb", kernelspec=False)
    assert _checked_notebook(nb, {"N": 3}, kernel="python3") == nb.resolve()
    with pytest.raises(InvalidInput, match=r"no parameter M\. Its parameters .*: API_KEY .*, N \(default 1\)"):
        _checked_notebook(nb, {"M": 3}, kernel="python3")


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("hello"), "is not a Jupyter notebook"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "is not a Jupyter notebook"),
    (lambda p: p.mkdir(), "is a folder: give the path of a .ipynb file"),
    (lambda p: None, "No notebook at"),
])
def test_what_is_not_a_notebook_is_refused_as_bad_input(tmp_path, capsys, make, message):
    path = tmp_path / "x.ipynb"
    make(path)
    with pytest.raises(InvalidInput, match=message):
        run(path, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before a run folder was made
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labkit: error:") and "Traceback" not in err


def test_a_missing_labkit_kernel_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    def missing(self, name):
        raise NoSuchKernel(name)

    monkeypatch.setattr(KernelSpecManager, "get_kernel_spec", missing)
    nb = _notebook(tmp_path / "nb.ipynb")
    with pytest.raises(InvalidInput, match=r"No Jupyter kernel named 'labkit'.*-m ipykernel install --sys-prefix "
                                           r"--name labkit"):
        run(nb, out=tmp_path / "out")
    assert main(["run", str(nb), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.count("labkit: error:") == 1


@pytest.mark.parametrize("out", ["afile", "afile/run"])
def test_a_run_folder_where_a_file_is_is_refused(tmp_path, out):
    (tmp_path / "afile").write_text("")
    nb = _notebook(tmp_path / "nb.ipynb")
    with pytest.raises(InvalidInput, match=r"cannot be made: .*afile is a file"):
        run(nb, out=tmp_path / out, kernel="python3")
    with pytest.raises(InvalidInput, match="is a file"):
        run_grid(nb, {"N": [1, 2]}, out=tmp_path / out, progress=False)
