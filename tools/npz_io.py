"""``.npz`` output shared by the fixture generators (``export_fixtures.py``, ``export_corpus.py``,
``export_torch_corpus.py``, ``train_shapes.py``).

The archives are what ``np.savez`` writes, uncompressed, with fixed zip timestamps and
permissions, so that regenerating a fixture gives the same bytes. The scripts import it as a
sibling module (``tools/`` is the script's own folder, first on ``sys.path``).
"""

from __future__ import annotations

import io
import zipfile

import numpy as np


def save_npz(path: str, arrays: dict) -> None:
    """np.savez-compatible, uncompressed, with fixed zip timestamps (byte-reproducible)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in arrays:
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
