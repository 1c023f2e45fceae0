package store

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"github.com/apache/arrow/go/v15/arrow/memory"
)

// Read in ranges of 1,000 bytes, two at a time, objects of every size
// around a range's come back whole and exact, from a file:// bucket.
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

	// OpenArrow reads a file of several ranges.
	mem := memory.NewGoAllocator()
	schema := arrow.NewSchema([]arrow.Field{{Name: "x", Type: arrow.PrimitiveTypes.Int64}}, nil)
	bld := array.NewRecordBuilder(mem, schema)
	defer bld.Release()
	for i := range 3000 {
		bld.Field(0).(*array.Int64Builder).Append(int64(i) * 7)
	}
	rec := bld.NewRecord()
	defer rec.Release()
	if err := WriteArrow(ctx, b, "x.arrow", schema, mem, rec); err != nil {
		t.Fatal(err)
	}
	f, err := OpenArrow(ctx, b, "x.arrow", mem)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	back, err := f.Record(0)
	if err != nil {
		t.Fatal(err)
	}
	if !array.RecordEqual(back, rec) {
		t.Error("the Arrow file read in ranges differs from the one written")
	}
}
