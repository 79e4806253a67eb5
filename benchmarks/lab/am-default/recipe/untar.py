"""Extract a .tar.xz under a root, never replacing a path that exists (like GNU tar's
--skip-old-files, without needing the xz program)."""
import os
import sys
import tarfile

archive, root = sys.argv[1], sys.argv[2]
added = skipped = 0
with tarfile.open(archive, "r:xz") as tar:
    for m in tar.getmembers():
        if os.path.lexists(os.path.join(root, m.name)):
            skipped += 1
            continue
        tar.extract(m, root, filter="fully_trusted" if hasattr(tarfile, "data_filter") else None)
        added += 1
print(f"{archive}: {added} added, {skipped} already there")
