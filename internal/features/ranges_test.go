package features

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/memory"
	"gocloud.dev/blob"

	"dcd/internal/embed"
	"dcd/internal/ipcfile"
	"dcd/internal/store"
	"dcd/schemas"
)

// LoadRowsAt gives the rows LoadColumns gives at those indices, from a
// file:// bucket by preads of a few KiB of a 3 MiB file, from mem:// (as
// from any object store) by a few requests of its head, its tail and the
// rows, when the file is one record as EmbedShard writes it; indices out
// of order or past the end are errors.
func TestLoadRowsAt(t *testing.T) {
	ctx := context.Background()
	mem := memory.NewGoAllocator()
	local, err := store.Open(ctx, "file://"+t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	inMemory, err := store.Open(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	const rows, batch, dim, classes = 2000, 64, 384, 10
	rng := rand.New(rand.NewPCG(5, 6))
	var batches []embed.Batch
	for lo := 0; lo < rows; lo += batch {
		n := min(batch, rows-lo)
		bt := embed.Batch{Dims: []int{dim, classes}, Vectors: [][]float32{make([]float32, n*dim), make([]float32, n*classes)}}
		for i := range n {
			bt.Images = append(bt.Images, embed.Image{URI: fmt.Sprintf("pool/%d/%s.png", lo+i, strings.Repeat("x", rng.IntN(9)))})
		}
		for _, v := range bt.Vectors {
			for i := range v {
				v[i] = float32(rng.NormFloat64())
			}
		}
		batches = append(batches, bt)
	}
	columns := []string{"logits", "features"}
	seven := []int{3, 63, 64, 65, 700, 1500, 1999}
	for _, storedAs := range []string{"", schemas.Float16} {
		writeFile(t, local, "ref.arrow", batches, storedAs, mem)
		all, err := LoadColumns(ctx, local, "ref.arrow", columns, mem)
		if err != nil {
			t.Fatal(err)
		}
		for _, layout := range []string{"batches", "one record"} {
			key := "f" + storedAs + ".arrow"
			for _, b := range []*blob.Bucket{local, inMemory} {
				if layout == "batches" {
					writeFile(t, b, key, batches, storedAs, mem)
				} else {
					writeOneRecord(t, b, key, batches, storedAs, mem)
				}
			}
			// The last rows' values run into the file's tail, read first.
			var last []int
			for r := 1960; r < rows; r++ {
				last = append(last, r)
			}
			for _, want := range [][]int{{0}, {1999}, seven, last, {}, nil} { // nil: no rows, not all
				for name, bucket := range map[string]*blob.Bucket{"file": local, "mem": inMemory} {
					ms, err := LoadRowsAt(ctx, bucket, key, columns, want, mem)
					if err != nil {
						t.Fatalf("%s %s %q rows %v: %v", name, layout, storedAs, want, err)
					}
					for c := range columns {
						if len(ms[c].URIs) != len(want) || ms[c].Dim != all[c].Dim {
							t.Fatalf("%s %s %q rows %v column %d: %d URIs of %d values, want %d of %d", name, layout, storedAs, want, c, len(ms[c].URIs), ms[c].Dim, len(want), all[c].Dim)
						}
						for i, r := range want {
							if ms[c].URIs[i] != all[c].URIs[r] || !slices.Equal(ms[c].Row(i), all[c].Row(r)) {
								t.Fatalf("%s %s %q column %d: row %d is %s, not as LoadColumns reads it", name, layout, storedAs, c, r, ms[c].URIs[i])
							}
						}
					}
				}
			}
			for _, bad := range [][]int{{5, 3}, {2000}, {-1}, {4, 4}} {
				if _, err := LoadRowsAt(ctx, local, key, columns, bad, mem); err == nil || !strings.Contains(err.Error(), key) {
					t.Errorf("%q rows %v: %v, want an error naming the file", storedAs, bad, err)
				}
			}

			// Seven rows of the file are a few KiB of its bytes read: by
			// preads, or by requests in two rounds (the head, then the
			// tail and the rows) when the file is one record. Rows spread
			// all over it are still two rounds, the last of eight
			// requests.
			var spread []int
			for r := 0; r < rows; r += 13 {
				spread = append(spread, r)
			}
			for name, bucket := range map[string]*blob.Bucket{"file": local, "mem": inMemory, "mem, spread": inMemory} {
				want := seven
				if name == "mem, spread" {
					want = spread
				}
				sf, err := store.OpenFile(ctx, bucket, key)
				if err != nil {
					t.Fatal(err)
				}
				f := newRanges(sf)
				size := int(sf.Size())
				if _, err := f.rowsAt(ctx, bucket, key, columns, want, mem); err != nil {
					t.Fatal(err)
				}
				sf.Close()
				read, reads := 0, 0
				if !sf.Local() {
					read, reads = min(size, store.HeadBytes), 1
				}
				for _, g := range f.got {
					if sf.Local() || g.off+len(g.data) > store.HeadBytes { // else read from the head
						read += len(g.data)
						reads++
					}
				}
				t.Logf("%s %s %q: %d bytes of %d in %d reads, %d rounds after the head", name, layout, storedAs, read, size, reads, f.rounds)
				switch {
				case sf.Local() && read > size/20:
					t.Errorf("%s %s %q: read %d bytes of %d for 7 rows (%d reads)", name, layout, storedAs, read, size, reads)
				case name == "mem" && layout == "one record" && (read > store.HeadBytes+size/20 || reads > 8):
					t.Errorf("%s %s %q: requested %d bytes of %d for 7 rows (%d requests)", name, layout, storedAs, read, size, reads)
				case name == "mem, spread" && layout == "one record" && reads > 9:
					t.Errorf("%s %s %q: %d requests for %d rows, want the head, then the tail and the rows in 8", name, layout, storedAs, reads, len(want))
				case !sf.Local() && layout == "one record" && f.rounds != 1:
					t.Errorf("%s %s %q: %d rounds of requests after the head, want 1", name, layout, storedAs, f.rounds)
				case !sf.Local() && read > size+2*store.HeadBytes:
					// Reading the whole file once costs that much.
					t.Errorf("%s %s %q: requested %d bytes of a file of %d in %d requests", name, layout, storedAs, read, size, reads)
				}
			}
		}
	}
}

// writeOneRecord writes batches as the feature file at key, in one record
// (Concat), as EmbedShard writes a pool shard's.
func writeOneRecord(tb testing.TB, b *blob.Bucket, key string, batches []embed.Batch, storedAs string, mem memory.Allocator) {
	tb.Helper()
	recs := make([]arrow.Record, len(batches))
	for i, bt := range batches {
		recs[i] = Record(mem, []string{"features", "logits"}, bt, storedAs)
		defer recs[i].Release()
	}
	rec, err := Concat(mem, recs...)
	if err != nil {
		tb.Fatal(err)
	}
	defer rec.Release()
	if err := store.WriteArrow(context.Background(), b, key, rec.Schema(), mem, rec); err != nil {
		tb.Fatal(err)
	}
}

// A feature file damaged in its batch's metadata or its footer, byte by
// byte, gives rows or an error from LoadRowsAt, never a panic: a panic in
// a gather's read-ahead would take the worker down.
func TestLoadRowsAtDamagedNeverPanics(t *testing.T) {
	ctx := context.Background()
	mem := memory.NewGoAllocator()
	b, err := store.Open(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	const rows, dim, classes = 300, 64, 10 // 88 KB: past the head a first request reads
	bt := embed.Batch{Dims: []int{dim, classes}, Vectors: [][]float32{make([]float32, rows*dim), make([]float32, rows*classes)}}
	for i := range rows {
		bt.Images = append(bt.Images, embed.Image{URI: fmt.Sprintf("pool/%04d.png", i)})
	}
	writeOneRecord(t, b, "f.arrow", []embed.Batch{bt}, "", mem)
	data, err := b.ReadAll(ctx, "f.arrow")
	if err != nil {
		t.Fatal(err)
	}
	size := len(data)
	n, err := ipcfile.FooterLen(data[size-10:], size)
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := ipcfile.Blocks(ipcfile.Root(data[size-10-n:size-10]), ipcfile.FooterRecordBatches, size)
	if err != nil || len(blocks) != 1 {
		t.Fatal(blocks, err)
	}
	var at []int // the bytes to damage
	for i := blocks[0].Offset; i < blocks[0].Offset+blocks[0].MetaLen; i++ {
		at = append(at, i)
	}
	for i := size - 10 - n; i < size-10; i++ {
		at = append(at, i)
	}
	damaged := make([]byte, size)
	for _, i := range at {
		for _, v := range []byte{0, 0xff, data[i] ^ 1, data[i] + 8} {
			if v == data[i] {
				continue
			}
			copy(damaged, data)
			damaged[i] = v
			if err := b.WriteAll(ctx, "d.arrow", damaged, nil); err != nil {
				t.Fatal(err)
			}
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("byte %d set to %#x: LoadRowsAt panicked: %v", i, v, r)
					}
				}()
				LoadRowsAt(ctx, b, "d.arrow", []string{"features"}, []int{1, 250}, mem)
			}()
		}
	}
}

// join joins runs across the widest gaps, and every run is in one of its
// spans, whole.
func TestJoin(t *testing.T) {
	runs := []span{{0, 10}, {12, 3}, {100, 5}, {106, 1}, {500, 20}, {530, 2}}
	for n, want := range map[int][]span{
		2: {{0, 107}, {500, 32}},
		3: {{0, 15}, {100, 7}, {500, 32}},
		5: {{0, 10}, {12, 3}, {100, 7}, {500, 20}, {530, 2}},
		6: runs,
	} {
		if got := join(runs, n); !slices.Equal(got, want) {
			t.Errorf("join into %d: %v, want %v", n, got, want)
		}
	}
}
