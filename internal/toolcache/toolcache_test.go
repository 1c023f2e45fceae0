package toolcache

import (
	"os"
	"path/filepath"
	"testing"
)

func TestDir(t *testing.T) {
	home, _ := os.UserHomeDir()
	t.Setenv("DCD_CACHE", "")
	if got, want := Path("bin", "temporal"), filepath.Join(home, ".cache", "dcd", "bin", "temporal"); got != want {
		t.Errorf("unset: %s, want %s", got, want)
	}
	t.Setenv("DCD_CACHE", "/ci/cache")
	if got := Path("mnist"); got != "/ci/cache/mnist" {
		t.Errorf("DCD_CACHE=/ci/cache: %s", got)
	}
	dir := t.TempDir()
	t.Chdir(dir)
	t.Setenv("DCD_CACHE", "rel")
	if got := Dir(); got != filepath.Join(dir, "rel") {
		t.Errorf("DCD_CACHE=rel in %s: %s, want it made absolute", dir, got)
	}
}
