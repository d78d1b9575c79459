"""roidask.plotting as a package: its public names, and matplotlib imported only to draw."""

from __future__ import annotations

import subprocess
import sys

from roidask import plotting

# the public names of roidask.plotting before it became a package
NAMES_BEFORE = [
    "DPI",
    "VIEW_NAMES",
    "cut_voxel_indices",
    "find_cut_coords",
    "plot_condition_boxplots",
    "plot_ortho",
    "plot_roi",
    "plot_stat_map",
    "save_seed_figures",
    "voxel_to_world",
    "world_to_voxel",
]


def test_public_names_stay_importable_from_the_package():
    assert set(NAMES_BEFORE) <= set(plotting.__all__)
    assert sorted(plotting.__all__) == plotting.__all__
    for name in plotting.__all__:
        assert getattr(plotting, name) is not None
    namespace = {}
    exec("from roidask.plotting import *", namespace)
    assert set(plotting.__all__) <= set(namespace)
    assert plotting.save_seed_figures.__module__ == "roidask.plotting.seed_figures"
    assert plotting.plot_roi.__module__ == "roidask.plotting.panels"
    assert plotting.world_to_voxel.__module__ == "roidask.plotting.geometry"


def test_importing_and_geometry_do_not_import_matplotlib(haxby):
    mask = repr(str(haxby.mask))
    code = (
        "import sys\n"
        "import roidask.plotting as p\n"
        f"print(p.find_cut_coords({mask}), p.cut_voxel_indices({mask}, [0, 0, 0]))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib')\n"
        "assert not bad, bad\n"
        f"p.plot_ortho({mask})\n"  # drawing imports it
        "assert 'matplotlib.figure' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
