package store

import (
	"bytes"
	"context"
	"math/rand/v2"
	"strings"
	"testing"
)

// A File reads any bytes of an object: by preads from a file:// bucket,
// from mem:// (as from any object store) its head from the first request
// and the rest by ranged requests; a read past the end is an error naming
// the object.
func TestFile(t *testing.T) {
	ctx := context.Background()
	data := make([]byte, HeadBytes+100_000)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	for _, url := range []string{"file://" + t.TempDir(), "mem://"} {
		b, err := Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		for _, n := range []int{0, 10, HeadBytes, len(data)} { // smaller than the head, and larger
			if err := b.WriteAll(ctx, "obj", data[:n], nil); err != nil {
				t.Fatal(err)
			}
			f, err := OpenFile(ctx, b, "obj")
			if err != nil {
				t.Fatal(err)
			}
			if f.Size() != int64(n) || f.Local() != strings.HasPrefix(url, "file:") {
				t.Fatalf("%s: %d bytes, local %v", url, f.Size(), f.Local())
			}
			for _, r := range [][2]int{{0, n}, {0, min(n, 7)}, {n / 2, n / 3}, {max(n-5, 0), min(n, 5)}, {HeadBytes - 3, 10}} {
				off, m := r[0], r[1]
				p := make([]byte, m)
				_, err := f.ReadAt(p, int64(off))
				switch {
				case off+m <= n && (err != nil || !bytes.Equal(p, data[off:off+m])):
					t.Fatalf("%s, %d bytes: %d at %d: %v, or not the object's bytes", url, n, m, off, err)
				case off+m > n && m > 0 && err == nil:
					t.Fatalf("%s, %d bytes: %d at %d read, past the end", url, n, m, off)
				case off+m > n && !f.Local() && !strings.Contains(err.Error(), `"obj"`):
					t.Fatalf("%s: %v does not name the object", url, err)
				}
			}
			f.Close()
		}
	}
	b, _ := Open(ctx, "mem://")
	if _, err := OpenFile(ctx, b, "missing"); err == nil || !strings.Contains(err.Error(), `"missing"`) {
		t.Fatalf("a missing object: %v", err)
	}

	// An object rewritten between two requests is not read as one.
	if err := b.WriteAll(ctx, "obj", data, nil); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(ctx, b, "obj")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.WriteAll(ctx, "obj", data[:len(data)-1], nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 10), HeadBytes); err == nil || !strings.Contains(err.Error(), "changed") {
		t.Fatalf("a read of a rewritten object: %v", err)
	}
}
