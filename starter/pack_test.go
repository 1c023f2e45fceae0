package main

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"dcd/internal/dataset"
	"dcd/internal/store"
	"dcd/schemas"
)

// `starter pack` turns an ImageFolder on disk into archives that a pass
// reads as a webdataset with the same labels, and says how to name them.
func TestPack(t *testing.T) {
	dir := t.TempDir()
	for i := range 5 {
		var buf bytes.Buffer
		img := image.NewGray(image.Rect(0, 0, 2, 2))
		img.Pix[0] = uint8(i)
		png.Encode(&buf, img)
		label := []string{"cat", "dog"}[i%2]
		os.MkdirAll(filepath.Join(dir, "train", label), 0o755)
		os.WriteFile(filepath.Join(dir, "train", label, fmt.Sprintf("%d.png", i)), buf.Bytes(), 0o644)
	}
	storage := "file://" + dir
	code, stdout, stderr, dialed := run(t, "pack", "-storage", storage, "-prefix", "train", "-per-archive", "2", "packed/")
	if code != 0 || dialed != nil {
		t.Fatalf("exit %d (dialed Temporal: %v)\n%s%s", code, dialed != nil, stdout, stderr)
	}
	for _, want := range []string{"packed 5 images into 3 archives under packed/", "webdataset: packed/"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "packed/000002.tar: 1 images (5 packed)") {
		t.Errorf("stderr does not report the last archive:\n%s", stderr)
	}
	b, err := store.Open(context.Background(), storage)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var labels []string
	if err := dataset.Walk(context.Background(), b, schemas.Dataset{WebDataset: "packed/"}, func(it dataset.Item) error {
		labels = append(labels, it.Label)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// An ImageFolder lists in key order: cat/0, cat/2, cat/4, dog/1, dog/3.
	if got := strings.Join(labels, ","); got != "cat,cat,cat,dog,dog" {
		t.Errorf("the packed dataset's labels are %s", got)
	}

	for _, args := range [][]string{
		{"pack", "out"},
		{"pack", "-prefix", "a", "-manifest", "b", "out"},
		{"pack", "-prefix", "a"},
		{"pack", "-prefix", "a", "-per-archive", "0", "out"},
	} {
		if code, _, _, _ := run(t, args...); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage)", args, code)
		}
	}
}
