package mnist

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// realDir is where scripts/setup.sh puts MNIST (DefaultDir; `make test`
// sets DCD_MNIST_DIR).
func realDir(t *testing.T) string {
	dir := DefaultDir()
	if _, err := os.Stat(filepath.Join(dir, "t10k-labels-idx1-ubyte.gz")); err != nil {
		t.Skipf("MNIST data not available: %v", err)
	}
	return dir
}

func TestLoadReal(t *testing.T) {
	train, test, err := Load(realDir(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		s    *Set
		want int
	}{{"train", train, 60000}, {"test", test, 10000}} {
		if c.s.Len() != c.want || len(c.s.Labels) != c.want {
			t.Errorf("%s: %d images, %d labels, want %d", c.name, c.s.Len(), len(c.s.Labels), c.want)
		}
		if c.s.Rows != 28 || c.s.Cols != 28 {
			t.Errorf("%s: size %dx%d, want 28x28", c.name, c.s.Rows, c.s.Cols)
		}
		var seen [10]bool
		for _, l := range c.s.Labels {
			if l > 9 {
				t.Fatalf("%s: label %d out of range", c.name, l)
			}
			seen[l] = true
		}
		if seen != [10]bool{true, true, true, true, true, true, true, true, true, true} {
			t.Errorf("%s: not every digit present: %v", c.name, seen)
		}
	}
	img := train.Image(0)
	if b := img.Bounds(); b.Dx() != 28 || b.Dy() != 28 {
		t.Errorf("Image bounds %v", b)
	}
	img.Pix[0] = 255 // must not write through to the set
	if train.Images[0][0] == 255 {
		t.Error("Image did not copy the pixels")
	}
}

func writeGz(t *testing.T, path string, data []byte) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(data)
	zw.Close()
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func header(vals ...uint32) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.BigEndian, vals)
	return b.Bytes()
}

// writeSplit writes a tiny valid split with n 2x2 images and nLabels labels.
func writeSplit(t *testing.T, dir, prefix string, n, nLabels int) {
	writeGz(t, filepath.Join(dir, prefix+"-images-idx3-ubyte.gz"), append(header(imageMagic, uint32(n), 2, 2), make([]byte, n*4)...))
	writeGz(t, filepath.Join(dir, prefix+"-labels-idx1-ubyte.gz"), append(header(labelMagic, uint32(nLabels)), make([]byte, nLabels)...))
}

func TestLoadErrors(t *testing.T) {
	cases := []struct {
		name     string
		mutate   func(t *testing.T, dir string)
		file     string
		contains string
	}{
		{"ok", func(*testing.T, string) {}, "", ""},
		{"bad magic", func(t *testing.T, dir string) {
			writeGz(t, filepath.Join(dir, "t10k-labels-idx1-ubyte.gz"), append(header(0xdead, 3), 0, 1, 2))
		}, "t10k-labels-idx1-ubyte.gz", "bad magic"},
		{"truncated pixels", func(t *testing.T, dir string) {
			writeGz(t, filepath.Join(dir, "train-images-idx3-ubyte.gz"), append(header(imageMagic, 3, 2, 2), make([]byte, 5)...))
		}, "train-images-idx3-ubyte.gz", "truncated"},
		{"truncated gzip", func(t *testing.T, dir string) {
			p := filepath.Join(dir, "train-labels-idx1-ubyte.gz")
			b, _ := os.ReadFile(p)
			os.WriteFile(p, b[:len(b)/2], 0o644)
		}, "train-labels-idx1-ubyte.gz", "truncated"},
		{"zero-sized images, 2^30 of them", func(t *testing.T, dir string) {
			writeGz(t, filepath.Join(dir, "train-images-idx3-ubyte.gz"), header(imageMagic, 1<<30, 0, 0))
		}, "train-images-idx3-ubyte.gz", "implausible"},
		{"count mismatch", func(t *testing.T, dir string) {
			writeSplit(t, dir, "t10k", 3, 2)
		}, "t10k-images-idx3-ubyte.gz", "labels"},
		{"missing", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, "t10k-images-idx3-ubyte.gz"))
		}, "t10k-images-idx3-ubyte.gz", "no such file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeSplit(t, dir, "train", 3, 3)
			writeSplit(t, dir, "t10k", 2, 2)
			c.mutate(t, dir)
			train, test, err := Load(dir)
			if c.file == "" {
				if err != nil || train.Len() != 3 || test.Len() != 2 {
					t.Fatalf("Load = %v, %v, %v", train, test, err)
				}
				return
			}
			if err == nil {
				t.Fatal("Load succeeded, want error")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "mnist: ") || !strings.Contains(msg, c.file) || !strings.Contains(msg, c.contains) {
				t.Errorf("error %q should start with \"mnist: \" and mention %q and %q", msg, c.file, c.contains)
			}
		})
	}
}
