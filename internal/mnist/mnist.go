// Package mnist reads the MNIST handwritten-digit data set from its standard IDX gzip files.
//
// Load expects the four canonical file names (train-images-idx3-ubyte.gz and
// friends) in one directory and returns the train and test splits. Images are
// kept as raw bytes so callers can build tensors or image.Gray values as needed.
package mnist

import (
	"bufio"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"image"
	"io"
	"os"
	"path/filepath"

	"dcd/internal/toolcache"
)

const (
	imageMagic = 0x00000803 // unsigned byte, 3 dimensions
	labelMagic = 0x00000801 // unsigned byte, 1 dimension
)

// Set is one split of MNIST: Images[i] is 28*28 bytes, row-major, 0 = background.
type Set struct {
	Images     [][]byte
	Labels     []uint8
	Rows, Cols int
}

// Len returns the number of examples in the split.
func (s *Set) Len() int { return len(s.Images) }

// Image returns example i as a fresh *image.Gray, so callers may modify it freely.
func (s *Set) Image(i int) *image.Gray {
	img := image.NewGray(image.Rect(0, 0, s.Cols, s.Rows))
	copy(img.Pix, s.Images[i])
	return img
}

// DefaultDir is where `make setup` puts the four MNIST files: $DCD_MNIST_DIR
// when set, else the setup's folder's mnist (toolcache).
func DefaultDir() string {
	if d := os.Getenv("DCD_MNIST_DIR"); d != "" {
		return d
	}
	return toolcache.Path("mnist")
}

// Load reads the train and test splits from the standard file names in dir.
func Load(dir string) (train, test *Set, err error) {
	train, err = loadSet(filepath.Join(dir, "train-images-idx3-ubyte.gz"), filepath.Join(dir, "train-labels-idx1-ubyte.gz"))
	if err != nil {
		return nil, nil, err
	}
	test, err = LoadTest(dir)
	if err != nil {
		return nil, nil, err
	}
	return train, test, nil
}

// LoadTest reads the test split alone, which needs only its two files in
// dir (t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz).
func LoadTest(dir string) (*Set, error) {
	return loadSet(filepath.Join(dir, "t10k-images-idx3-ubyte.gz"), filepath.Join(dir, "t10k-labels-idx1-ubyte.gz"))
}

func loadSet(imagesPath, labelsPath string) (*Set, error) {
	var s Set
	var err error
	if s.Images, s.Rows, s.Cols, err = readImages(imagesPath); err != nil {
		return nil, err
	}
	if s.Labels, err = readLabels(labelsPath); err != nil {
		return nil, err
	}
	if len(s.Images) != len(s.Labels) {
		return nil, fmt.Errorf("mnist: %s has %d images but %s has %d labels",
			filepath.Base(imagesPath), len(s.Images), filepath.Base(labelsPath), len(s.Labels))
	}
	return &s, nil
}

func readImages(path string) (imgs [][]byte, rows, cols int, err error) {
	err = withGzip(path, func(r io.Reader) error {
		hdr, err := readHeader(r, path, imageMagic, 3)
		if err != nil {
			return err
		}
		n := int(hdr[0])
		rows, cols = int(hdr[1]), int(hdr[2])
		// One backing array keeps 60000 small slices from fragmenting the heap.
		buf := make([]byte, n*rows*cols)
		if _, err := io.ReadFull(r, buf); err != nil {
			return fmt.Errorf("mnist: %s: truncated pixel data (want %d images of %dx%d): %v", path, n, rows, cols, err)
		}
		imgs = make([][]byte, n)
		for i := range imgs {
			imgs[i] = buf[i*rows*cols : (i+1)*rows*cols : (i+1)*rows*cols]
		}
		return nil
	})
	return imgs, rows, cols, err
}

func readLabels(path string) (labels []uint8, err error) {
	err = withGzip(path, func(r io.Reader) error {
		hdr, err := readHeader(r, path, labelMagic, 1)
		if err != nil {
			return err
		}
		labels = make([]uint8, hdr[0])
		if _, err := io.ReadFull(r, labels); err != nil {
			return fmt.Errorf("mnist: %s: truncated label data (want %d labels): %v", path, hdr[0], err)
		}
		for i, l := range labels {
			if l > 9 {
				return fmt.Errorf("mnist: %s: label %d is %d, want 0-9", path, i, l)
			}
		}
		return nil
	})
	return labels, err
}

// readHeader checks the magic number and returns the dims dimension sizes.
func readHeader(r io.Reader, path string, magic uint32, dims int) ([]uint32, error) {
	hdr := make([]uint32, 1+dims)
	if err := binary.Read(r, binary.BigEndian, hdr); err != nil {
		return nil, fmt.Errorf("mnist: %s: truncated header: %v", path, err)
	}
	if hdr[0] != magic {
		return nil, fmt.Errorf("mnist: %s: bad magic number %#08x, want %#08x", path, hdr[0], magic)
	}
	// Guard the allocation that follows against a corrupt header asking for gigabytes.
	// A zero dimension is no MNIST file either, and its product would let
	// the count of images (a slice header each) pass unbounded.
	total := uint64(1)
	for _, d := range hdr[1:] {
		total *= uint64(d)
		if d == 0 || d > 1<<24 || total > 1<<30 {
			return nil, fmt.Errorf("mnist: %s: implausible dimensions %v", path, hdr[1:])
		}
	}
	return hdr[1:], nil
}

func withGzip(path string, fn func(io.Reader) error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("mnist: %w", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(bufio.NewReader(f))
	if err != nil {
		return fmt.Errorf("mnist: %s: not a gzip file: %v", path, err)
	}
	defer zr.Close()
	return fn(zr)
}
