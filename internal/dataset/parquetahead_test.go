package dataset

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/apache/arrow/go/v15/parquet/file"
	"gocloud.dev/blob"

	"dcd/schemas"
)

// randomManifest is a Parquet manifest of n rows in row groups of group,
// their uris random (40 bytes each, which no encoding shortens).
func randomManifest(t *testing.T, rng *rand.Rand, n int, group int64) (data []byte, uris, labels []string) {
	for i := range n {
		uris = append(uris, fmt.Sprintf("img/%016x%016x.png", rng.Uint64(), rng.Uint64()))
		labels = append(labels, fmt.Sprint(i%10))
	}
	return parquetManifest(t, uris, labels, nil, nil, group), uris, labels
}

// columnReadsOf reads m.parquet, size bytes, in b.
func columnReadsOf(t *testing.T, b *blob.Bucket, size int) *columnReads {
	c, err := newColumnReads(&rangeReader{ctx: context.Background(), b: b, key: "m.parquet", size: int64(size)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	return c
}

// Reads through columnReads return the file's bytes wherever they fall:
// each column read front to back in pieces of any length, across blocks
// and row groups, the columns in turn, a piece read again after the reader
// passed it, a piece past a chunk's end, the footer. And a manifest whose
// columns span several blocks and row groups walks whole, in order.
func TestColumnReads(t *testing.T) {
	const n = 100_000
	rng := rand.New(rand.NewPCG(1, 2))
	data, uris, _ := randomManifest(t, rng, n, 40_000)
	b := memBucket(t, map[string]string{"m.parquet": string(data)})
	ctx := context.Background()
	c := columnReadsOf(t, b, len(data))
	pf, err := file.NewParquetReader(c)
	if err != nil {
		t.Fatal(err)
	}
	c.plan(pf, []int{0, 1}, 0)
	if blocks := len(c.cols[0].blocks); blocks < 4 || pf.NumRowGroups() != 3 {
		t.Fatalf("uri column in %d blocks, %d row groups: want several of each", blocks, pf.NumRowGroups())
	}
	check := func(off, length int64) {
		t.Helper()
		p := make([]byte, length)
		got, err := c.ReadAt(p, off)
		if err != nil || int64(got) != length || !bytes.Equal(p, data[off:off+length]) {
			t.Fatalf("ReadAt(%d, %d): %d bytes, %v; not the file's", off, length, got, err)
		}
	}
	// The columns' pieces come from their blocks: reads straight from the
	// store would find nothing.
	direct := c.direct
	c.direct = &rangeReader{ctx: ctx, b: memBucket(t, nil), key: "m.parquet", size: int64(len(data))}
	var ends []int64
	for g := range pf.NumRowGroups() {
		for col := range 2 {
			cc, _ := pf.MetaData().RowGroup(g).ColumnChunk(col)
			start := cc.DataPageOffset()
			if cc.HasDictionaryPage() && cc.DictionaryPageOffset() > 0 {
				start = min(start, cc.DictionaryPageOffset())
			}
			end := start + cc.TotalCompressedSize()
			for off := start; off < end; {
				length := min(end-off, 1+rng.Int64N(3*parquetBlock/2))
				check(off, length)
				off += length
			}
			check(start, min(end-start, 100)) // again, after the reader passed it
			ends = append(ends, end)
		}
	}
	check(int64(len(data))-8, 8) // the footer's length
	c.direct = direct
	for _, end := range ends {
		check(end-10, min(20, int64(len(data))-(end-10))) // past a chunk's end
	}

	var got []string
	if err := (Source{Bucket: b}).Walk(ctx, schemas.Dataset{Manifest: "m.parquet"}, func(it Item) error {
		got = append(got, it.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("walked %d rows, want %d", len(got), n)
	}
	for i, k := range got {
		if k != uris[i] {
			t.Fatalf("row %d: %s, want %s", i, k, uris[i])
		}
	}
}

// A manifest rewritten while a walk reads it: the reads after the change
// fail it with ErrChanged (which planning answers by walking again from
// the start), instead of pairing rows of two versions or calling the file
// damaged. Its uri column spans more blocks than are read ahead, so the
// walk is still reading when its first row comes.
func TestParquetChangedWhileRead(t *testing.T) {
	const n = 300_000
	rng := rand.New(rand.NewPCG(3, 4))
	data, uris, labels := randomManifest(t, rng, n, n)
	b := memBucket(t, map[string]string{"m.parquet": string(data)})
	ctx := context.Background()

	// A range read after the change, on its own.
	c := columnReadsOf(t, b, len(data))
	if err := b.WriteAll(ctx, "m.parquet", data[:len(data)-1], nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.direct.ReadAt(make([]byte, 100), 0); !errors.Is(err, ErrChanged) {
		t.Errorf("a read after the manifest changed: %v, want ErrChanged", err)
	}

	// A walk.
	if err := b.WriteAll(ctx, "m.parquet", data, nil); err != nil {
		t.Fatal(err)
	}
	other := parquetManifest(t, uris[:n/2], labels[:n/2], nil, nil, n/2)
	rows := 0
	err := (Source{Bucket: b}).Walk(ctx, schemas.Dataset{Manifest: "m.parquet"}, func(it Item) error {
		if rows == 0 {
			if err := b.WriteAll(ctx, "m.parquet", other, nil); err != nil {
				return err
			}
		}
		rows++
		return nil
	})
	if !errors.Is(err, ErrChanged) {
		t.Errorf("a walk whose manifest changed after %d of %d rows: %v, want ErrChanged", rows, n, err)
	}
}
