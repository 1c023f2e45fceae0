package store

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"
)

// Read in ranges of 1,000 bytes, two at a time, objects of every size
// around a range's come back whole and exact, from a file:// bucket
// (TestS3ReadsArrowInRanges reads a feature-sized file from S3).
func TestReadRanged(t *testing.T) {
	rangeBytes, rangesAtOnce = 1000, 2
	t.Cleanup(func() { rangeBytes, rangesAtOnce = 1<<20, 8 })
	ctx := context.Background()
	b, err := Open(ctx, "file://"+t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{0, 1, 999, 1000, 1001, 2000, 5500, 17017} {
		want := make([]byte, size)
		for i := range want {
			want[i] = byte(rng.Uint32())
		}
		if err := WriteAll(ctx, b, "obj", want); err != nil {
			t.Fatal(err)
		}
		got, err := readRanged(ctx, b, "obj")
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%d bytes: read %d, equal %v, %v", size, len(got), bytes.Equal(got, want), err)
		}
	}
	if _, err := readRanged(ctx, b, "missing"); err == nil {
		t.Error("a missing object read")
	}
	// A range of another version of the object is refused.
	if err := readRange(ctx, b, "obj", make([]byte, 10), 0, 17017, time.Unix(0, 0)); !errors.Is(err, errChanged) {
		t.Errorf("a range of another modification time: %v, want errChanged", err)
	}
	if err := readRange(ctx, b, "obj", make([]byte, 10), 0, 17016, time.Time{}); !errors.Is(err, errChanged) {
		t.Errorf("a range of another size: %v, want errChanged", err)
	}
}
