"""Reading and damaging checkpoint files on disk (shared by the resume tests)."""

import glob
import os
import pathlib


def tree_bytes(directory) -> dict:
    """Every file under ``directory`` -> its bytes (to show nothing was touched)."""
    return {
        p: pathlib.Path(p).read_bytes()
        for p in sorted(glob.glob(f"{directory}/**", recursive=True))
        if os.path.isfile(p)
    }


def flip_array_bit(step_dir) -> None:
    """One bit of the largest array file of a step's state (orbax restores it silently)."""
    f = max(glob.glob(f"{step_dir}/state/ocdbt.process_0/d/*"), key=os.path.getsize)
    data = bytearray(pathlib.Path(f).read_bytes())
    data[len(data) // 2] ^= 0x04
    pathlib.Path(f).write_bytes(bytes(data))


def truncate_arrays(step_dir) -> None:
    """Every array file of a step's state cut to a third."""
    for f in glob.glob(f"{step_dir}/state/ocdbt.process_0/d/*"):
        data = pathlib.Path(f).read_bytes()
        pathlib.Path(f).write_bytes(data[: len(data) // 3])
