package store

import (
	"path/filepath"

	"golang.org/x/sys/unix"
)

// device returns the ID of the mount that holds path, or its nearest
// existing parent: a rename fails (EXDEV) across mounts even of one
// filesystem, as a container's bind mounts of one disk at /tmp and at
// the bucket's folder are, whose st_dev is the same. The mount's ID
// needs Linux 5.8; on an older kernel it cannot be told.
func device(path string) (uint64, bool) {
	for {
		var st unix.Statx_t
		err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_MNT_ID, &st)
		if err == nil {
			return st.Mnt_id, st.Mask&unix.STATX_MNT_ID != 0
		}
		parent := filepath.Dir(path)
		if parent == path {
			return 0, false
		}
		path = parent
	}
}
