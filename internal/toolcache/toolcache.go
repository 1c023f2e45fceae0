// Package toolcache says where scripts/setup.sh installs what the project
// fetches (the Temporal CLI, ONNX Runtime, MNIST, the test servers), so
// that a program run outside make finds them where make's setup put them.
package toolcache

import (
	"os"
	"path/filepath"
)

// Dir is the setup's folder: $DCD_CACHE when set (made absolute, as the
// setup makes it), else ~/.cache/dcd.
func Dir() string {
	if d := os.Getenv("DCD_CACHE"); d != "" {
		if abs, err := filepath.Abs(d); err == nil {
			return abs
		}
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "dcd")
}

// Path is name's path under Dir.
func Path(name ...string) string { return filepath.Join(append([]string{Dir()}, name...)...) }
