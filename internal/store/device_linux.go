package store

import (
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// device names the filesystem and the mount that hold path, or its
// nearest existing parent: a rename fails (EXDEV) across either. Across
// filesystems (btrfs's subvolumes are each one, under one mount), and
// across mounts even of one filesystem, as a container's bind mounts of
// one disk at /tmp and at the bucket's folder are. The mount's ID needs
// Linux 5.8 (and statx, which a seccomp filter may refuse); without it
// the place cannot be told, which sameFilesystem reads as apart.
func device(path string) (string, bool) {
	for {
		var st unix.Statx_t
		err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_MNT_ID, &st)
		if err == nil {
			if st.Mask&unix.STATX_MNT_ID == 0 {
				return "", false
			}
			return fmt.Sprintf("%d:%d mount %d", st.Dev_major, st.Dev_minor, st.Mnt_id), true
		}
		if err == unix.ENOSYS || err == unix.EPERM {
			return "", false
		}
		parent := filepath.Dir(path)
		if parent == path {
			return "", false
		}
		path = parent
	}
}
