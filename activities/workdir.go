package activities

import (
	"os"
	"path/filepath"
	"strings"
)

// A trainer's work folder ({work}) may hold its spooled features, GBs of
// them. The activity removes it when it ends; a worker killed outright
// (SIGKILL, OOM) cannot, so each folder holds a lock file its activity
// keeps locked while it runs, and a worker starting removes the folders
// whose lock no process holds (others' on the same machine are in use).

// workPrefix begins the name of every trainer work folder.
const workPrefix = "dcd-train-"

// workLock is the file in a work folder that its activity keeps locked.
const workLock = ".dcd-lock"

// newWorkDir makes a trainer work folder in dir ("" for the system's) and
// locks it; done unlocks and removes it.
func newWorkDir(dir string) (path string, done func(), err error) {
	path, err = os.MkdirTemp(dir, workPrefix)
	if err != nil {
		return "", nil, err
	}
	unlock, err := lockFile(filepath.Join(path, workLock))
	if err != nil {
		os.RemoveAll(path)
		return "", nil, err
	}
	return path, func() { os.RemoveAll(path); unlock() }, nil
}

// RemoveStaleWork removes the trainer work folders in dir ("" for the
// system's) that a killed worker left: those whose lock no process holds.
// It returns the folders removed. Folders it cannot judge (no lock file,
// another user's) are left.
func RemoveStaleWork(dir string) []string {
	if dir == "" {
		dir = os.TempDir()
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var removed []string
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), workPrefix) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		unlock, err := tryLockFile(filepath.Join(path, workLock))
		if err != nil {
			continue // in use, or not ours to judge
		}
		if os.RemoveAll(path) == nil {
			removed = append(removed, path)
		}
		unlock()
	}
	return removed
}
