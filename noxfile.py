"""The test matrix: the suite on PostgreSQL for every supported Django and Python pair.

    nox -s tests                   # the whole matrix, one session after another
    nox -j 2 -s tests              # the same, two sessions at a time
    nox -s "tests(django42-py311)" # one pair; `nox -l` lists them

Each session needs Redis and PostgreSQL as README.rst's test command does, and gets a database
name of its own (``TEST_DB_SUFFIX``), so sessions can run side by side. Arguments after ``--``
go to pytest. Interpreters are looked up as ``python3.X`` on ``PATH``; with pyenv, make them
visible first, for example ``export PYENV_VERSION=3.11.7:3.12.1:3.13.0``.

Sessions install the dependencies only and test the source tree (``python -m pytest`` puts it
first on ``sys.path``): nothing is built in the tree, so parallel sessions cannot race on
``*.egg-info``. The built wheel is checked by ``scripts/smoke_wheel.sh``.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True  # a skipped pair must not pass silently
nox.options.download_python = "never"
nox.options.sessions = ["tests"]

PYPROJECT = nox.project.load_toml("pyproject.toml")

# (Python, Django requirement, session id)
MATRIX = [
    nox.param("3.11", "Django>=4.2,<5.0", id="django42-py311"),
    nox.param("3.11", "Django>=5.2,<6.0", id="django52-py311"),
    nox.param("3.12", "Django>=6.0,<7.0", id="django6-py312"),
    nox.param("3.13", "Django>=6.0,<7.0", id="django6-py313"),
]


@nox.session(allow_parallel=True)
@nox.parametrize(("python", "django"), MATRIX)
def tests(session: nox.Session, django: str) -> None:
    """The test suite on PostgreSQL with one Django release (runtests.py --db postgresql)."""
    project = PYPROJECT["project"]
    session.install(*project["dependencies"], *project["optional-dependencies"]["test"], django)
    session.run("python", "-m", "django", "--version")
    suffix = "_" + session.name.split("(", 1)[1].rstrip(")").replace("-", "_")
    session.run(
        "python",
        "runtests.py",
        "--db",
        "postgresql",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env={"TEST_DB_SUFFIX": suffix},
    )
