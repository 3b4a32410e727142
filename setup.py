"""Maps the design card's folders onto import names that cannot clash.

`drivers/` installs as `edge_agent_drivers` and `simulators/` as `edge_agent_simulators`:
plain `drivers` or `simulators` would collide with any other distribution using those names.
"""

from setuptools import find_packages, setup

FOLDERS = {"edge_agent": "edge_agent", "edge_agent_drivers": "drivers",
           "edge_agent_simulators": "simulators"}


def _packages() -> list[str]:
    found = []
    for name, folder in FOLDERS.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(folder)]
    return found


setup(packages=_packages(), package_dir=FOLDERS,
      package_data={"edge_agent": ["py.typed"], "edge_agent_simulators": ["*.yaml"]})
