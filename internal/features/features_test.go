package features

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"github.com/apache/arrow/go/v15/arrow/memory"
	"gocloud.dev/blob"

	"dcd/internal/embed"
	"dcd/internal/half"
	"dcd/internal/ipcfile"
	"dcd/internal/preprocess"
	"dcd/internal/store"
	"dcd/schemas"
)

// A feature file written from batches loads back as the matrix of its
// rows: float32 values exactly, float16 values as their float32 rounding,
// in a file about half the size. A float32 spec keeps the digest it had
// before the value type was part of it.
func TestRecordLoad(t *testing.T) {
	ctx := context.Background()
	b, err := store.Open(ctx, "file://"+t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	rng := rand.New(rand.NewPCG(3, 84))
	const dim, classes = 256, 3
	var batches []embed.Batch
	var uris []string
	var want []float32
	for _, n := range []int{5, 0, 17, 1} { // an empty batch too
		bt := embed.Batch{Dims: []int{dim, classes}, Vectors: [][]float32{make([]float32, n*dim), make([]float32, n*classes)}}
		for i := range n {
			bt.Images = append(bt.Images, embed.Image{URI: "img/" + strings.Repeat("x", rng.IntN(5)) + string(rune('a'+len(uris)))})
			uris = append(uris, bt.Images[i].URI)
		}
		for i := range bt.Vectors[0] {
			bt.Vectors[0][i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(7)-3)))
		}
		for i := range bt.Vectors[1] {
			bt.Vectors[1][i] = float32(rng.NormFloat64())
		}
		want = append(want, bt.Vectors[0]...)
		batches = append(batches, bt)
	}
	sizes := map[string]int64{}
	for _, storedAs := range []string{"", schemas.Float16} {
		key := "features/" + storedAs + ".arrow"
		writeFile(t, b, key, batches, storedAs, mem)
		attrs, err := b.Attributes(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		sizes[storedAs] = attrs.Size

		m, err := Load(ctx, b, key, "features", mem)
		if err != nil {
			t.Fatal(err)
		}
		if m.Dim != dim || strings.Join(m.URIs, ",") != strings.Join(uris, ",") || len(m.Data) != len(want) {
			t.Fatalf("%q: %d URIs %v, dim %d, %d values; want %v, %d, %d", storedAs, len(m.URIs), m.URIs, m.Dim, len(m.Data), uris, dim, len(want))
		}
		both, err := LoadColumns(ctx, b, key, []string{"logits", "features"}, mem)
		if err != nil {
			t.Fatal(err)
		}
		logits, err := Load(ctx, b, key, "logits", mem)
		if err != nil {
			t.Fatal(err)
		}
		if both[0].Dim != classes || !slices.Equal(both[0].Data, logits.Data) || !slices.Equal(both[1].Data, m.Data) || !slices.Equal(both[1].URIs, uris) {
			t.Fatalf("%q: LoadColumns gave %d and %d values, Load %d and %d", storedAs, len(both[0].Data), len(both[1].Data), len(logits.Data), len(m.Data))
		}
		for i, v := range want {
			if storedAs == schemas.Float16 {
				v = half.ToFloat32(half.FromFloat32(v))
			}
			if m.Data[i] != v {
				t.Fatalf("%q: value %d is %v, want %v", storedAs, i, m.Data[i], v)
			}
		}
		// LoadRowsAt keeps some rows, as LoadColumns has them: rows 1, 7, 8
		// and 22 of 23, of the first, third (7 and 8 a run) and last records.
		some := []int{1, 7, 8, 22}
		rows, err := LoadRowsAt(ctx, b, key, []string{"features", "logits"}, some, mem)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(rows[0].URIs, []string{uris[1], uris[7], uris[8], uris[22]}) {
			t.Errorf("%q: LoadRowsAt kept %v, want rows %v", storedAs, rows[0].URIs, some)
		}
		for r, i := range some {
			if !slices.Equal(rows[0].Row(r), m.Row(i)) || !slices.Equal(rows[1].Row(r), logits.Row(i)) {
				t.Errorf("%q: LoadRowsAt row %d differs from LoadColumns' row %d", storedAs, r, i)
			}
		}
		// It picked them in place (pickRows), not through Arrow's reader;
		// a file cut short or with a damaged footer is an error, not a
		// panic or rows made up.
		af, err := store.OpenArrow(ctx, b, key, mem)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []picker{{byIndex: true, rows: some}, {}} {
			picked, ok, err := pickRows(whole(af.Data), len(af.Data), af.Schema(), []int{1, 2}, []int{dim, classes}, p)
			viaArrow, aerr := arrowRows(key, af, []string{"features", "logits"}, []int{1, 2}, []int{dim, classes}, p)
			if !ok || err != nil || aerr != nil || !slices.Equal(picked[0].URIs, viaArrow[0].URIs) ||
				!slices.Equal(picked[0].Data, viaArrow[0].Data) || !slices.Equal(picked[1].Data, viaArrow[1].Data) {
				t.Errorf("%q: pickRows: ok %v, %v; want the rows Arrow's reader gives (%v)", storedAs, ok, err, aerr)
			}
		}
		cut := af.Data[:len(af.Data)-7]
		if _, ok, err := pickRows(whole(cut), len(cut), af.Schema(), []int{1, 2}, []int{dim, classes}, picker{}); !ok || err == nil {
			t.Errorf("%q: a file cut short: ok %v, %v; want an error", storedAs, ok, err)
		}
		bad := slices.Clone(af.Data)
		copy(bad[len(bad)-10:], []byte{0xff, 0xff, 0xff, 0x0f}) // the footer's length
		if _, ok, err := pickRows(whole(bad), len(bad), af.Schema(), []int{1, 2}, []int{dim, classes}, picker{}); !ok || err == nil {
			t.Errorf("%q: a damaged footer: ok %v, %v; want an error", storedAs, ok, err)
		}
		// A batch claiming 2^30 rows is damaged, not 2^30 rows to allocate.
		huge := slices.Clone(af.Data)
		footer, err := ipcfile.Footer(huge)
		if err != nil {
			t.Fatal(err)
		}
		blocks, err := ipcfile.Blocks(footer, ipcfile.FooterRecordBatches, len(huge))
		if err != nil {
			t.Fatal(err)
		}
		rb := ipcfile.Root(huge[blocks[0].Offset+8:]).Table(2)
		binary.LittleEndian.PutUint64(rb.B[rb.Field(0):], 1<<30)
		if _, ok, err := pickRows(whole(huge), len(huge), af.Schema(), []int{1, 2}, []int{dim, classes}, picker{}); !ok || err == nil || !strings.Contains(err.Error(), "damaged") {
			t.Errorf("%q: a batch of 2^30 rows: ok %v, %v; want it damaged", storedAs, ok, err)
		}
		af.Close()
	}
	if sizes[schemas.Float16] > sizes[""]*6/10 {
		t.Errorf("%d bytes as float16, %d as float32", sizes[schemas.Float16], sizes[""])
	}

	spec := Spec{ModelDigest: "abc", Input: "image", Outputs: []string{"f"}, Columns: []string{"features"}}
	f32, f16 := spec, spec
	f32.StoredAs, f16.StoredAs = schemas.Float32, schemas.Float16
	if f32.Digest() != spec.Digest() || f16.Digest() == spec.Digest() {
		t.Errorf("digests: %s unset, %s float32, %s float16; want float32's the same as unset, float16's its own", spec.Digest(), f32.Digest(), f16.Digest())
	}
	// Features decoded otherwise are another cache entry, and a worker
	// with other decoders embeds none for the spec.
	now, next := spec, spec
	now.Decoder, next.Decoder = preprocess.DecoderVersion, preprocess.DecoderVersion+1
	if now.Digest() == next.Digest() || now.Digest() == spec.Digest() {
		t.Errorf("digests %s, %s with decoders %d, %d and %s without: want three", now.Digest(), next.Digest(), now.Decoder, next.Decoder, spec.Digest())
	}
	if now.Embeddable() != nil || spec.Embeddable() != nil || next.Embeddable() == nil {
		t.Errorf("embeddable: %v with this worker's decoders, %v without, %v with others; want only the last refused", now.Embeddable(), spec.Embeddable(), next.Embeddable())
	}
}

// A column of another value type is refused, naming the file and column.
func TestLoadRefusesOtherTypes(t *testing.T) {
	ctx := context.Background()
	b, err := store.Open(ctx, "file://"+t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mem := memory.NewGoAllocator()
	schema := arrow.NewSchema([]arrow.Field{{Name: "uri", Type: arrow.BinaryTypes.String}, {Name: "features", Type: arrow.FixedSizeListOf(2, arrow.PrimitiveTypes.Float64)}}, nil)
	rb := array.NewRecordBuilder(mem, schema)
	defer rb.Release()
	rb.Field(0).(*array.StringBuilder).Append("img/a")
	lb := rb.Field(1).(*array.FixedSizeListBuilder)
	lb.Append(true)
	lb.ValueBuilder().(*array.Float64Builder).AppendValues([]float64{1, 2}, nil)
	rec := rb.NewRecord()
	defer rec.Release()
	if err := store.WriteArrow(ctx, b, "features/f64.arrow", schema, mem, rec); err != nil {
		t.Fatal(err)
	}
	_, err = Load(ctx, b, "features/f64.arrow", "features", mem)
	if err == nil || !strings.Contains(err.Error(), "features/f64.arrow") || !strings.Contains(err.Error(), `"features"`) || !strings.Contains(err.Error(), "float16") {
		t.Errorf("float64 column: %v, want an error naming the file, the column and the types it takes", err)
	}

	// Column 0 holds the images' URIs: anything else is refused, not a panic.
	schema = arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64}, {Name: "features", Type: arrow.FixedSizeListOf(2, arrow.PrimitiveTypes.Float32)}}, nil)
	rb2 := array.NewRecordBuilder(mem, schema)
	defer rb2.Release()
	rb2.Field(0).(*array.Int64Builder).Append(7)
	lb = rb2.Field(1).(*array.FixedSizeListBuilder)
	lb.Append(true)
	lb.ValueBuilder().(*array.Float32Builder).AppendValues([]float32{1, 2}, nil)
	rec2 := rb2.NewRecord()
	defer rec2.Release()
	if err := store.WriteArrow(ctx, b, "features/ids.arrow", schema, mem, rec2); err != nil {
		t.Fatal(err)
	}
	if _, err = Load(ctx, b, "features/ids.arrow", "features", mem); err == nil || !strings.Contains(err.Error(), "features/ids.arrow") || !strings.Contains(err.Error(), "URIs") {
		t.Errorf("int64 column 0: %v, want an error naming the file and what column 0 holds", err)
	}
	if _, err = LoadRowsAt(ctx, b, "features/ids.arrow", []string{"features"}, []int{0}, mem); err == nil || !strings.Contains(err.Error(), "URIs") {
		t.Errorf("int64 column 0, some rows: %v, want the same error", err)
	}
}

// BenchmarkLoadRows reads a pool shard's feature file (2,000 rows of 384
// features and 10 logits, in batches of 64), whole or 20 of its rows, in
// place (LoadColumns, loadRows) and through Arrow's reader (arrowRows),
// from memory; and the 20 rows by requests (mem/requests, as LoadRowsAt
// reads an object store, of the file in one record as EmbedShard writes
// it), and from a file, read whole (file/whole) or by preads
// (file/preads, as LoadRowsAt reads a file:// bucket).
func BenchmarkLoadRows(b *testing.B) {
	ctx := context.Background()
	bucket, err := store.Open(ctx, "mem://")
	if err != nil {
		b.Fatal(err)
	}
	mem := memory.NewGoAllocator()
	const rows, batch, dim, classes = 2000, 64, 384, 10
	columns := []string{"features", "logits"}
	var batches []embed.Batch
	for lo := 0; lo < rows; lo += batch {
		n := min(batch, rows-lo)
		bt := embed.Batch{Dims: []int{dim, classes}, Vectors: [][]float32{make([]float32, n*dim), make([]float32, n*classes)}}
		for i := range n {
			bt.Images = append(bt.Images, embed.Image{URI: fmt.Sprintf("pool/%07d.png", lo+i)})
		}
		batches = append(batches, bt)
	}
	writeFile(b, bucket, "f.arrow", batches, "", mem)
	writeOneRecord(b, bucket, "one.arrow", batches, "", mem)
	local, err := store.Open(ctx, "file://"+b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	writeFile(b, local, "f.arrow", batches, "", mem)
	var at []int
	for i := 0; i < rows; i += 100 {
		at = append(at, i)
	}
	twenty := picker{byIndex: true, rows: at}
	for name, load := range map[string]func() error{
		"all/inplace":    func() error { _, err := LoadColumns(ctx, bucket, "f.arrow", columns, mem); return err },
		"20rows/inplace": func() error { _, err := loadRows(ctx, bucket, "f.arrow", columns, mem, twenty); return err },
		"20rows/mem/requests": func() error {
			_, err := LoadRowsAt(ctx, bucket, "one.arrow", columns, at, mem)
			return err
		},
		"20rows/file/whole": func() error { _, err := loadRows(ctx, local, "f.arrow", columns, mem, twenty); return err },
		"20rows/file/preads": func() error {
			_, err := LoadRowsAt(ctx, local, "f.arrow", columns, at, mem)
			return err
		},
	} {
		b.Run(name, func(b *testing.B) {
			for range b.N {
				if err := load(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	for name, p := range map[string]picker{"all/arrow": {}, "20rows/arrow": twenty} {
		b.Run(name, func(b *testing.B) {
			for range b.N {
				f, err := store.OpenArrow(ctx, bucket, "f.arrow", mem)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := arrowRows("f.arrow", f, columns, []int{1, 2}, []int{dim, classes}, p); err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
		})
	}
}

// writeFile writes batches as the feature file at key, a record each.
func writeFile(tb testing.TB, b *blob.Bucket, key string, batches []embed.Batch, storedAs string, mem memory.Allocator) {
	tb.Helper()
	ctx := context.Background()
	var w *store.ArrowWriter
	for _, bt := range batches {
		rec := Record(mem, []string{"features", "logits"}, bt, storedAs)
		if w == nil {
			var err error
			if w, err = store.NewArrowWriter(ctx, b, key, rec.Schema(), mem); err != nil {
				tb.Fatal(err)
			}
		}
		if err := w.Write(rec); err != nil {
			tb.Fatal(err)
		}
		rec.Release()
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
}

// FuzzPickRows damages feature files: reading one in place fails, falls
// back to Arrow's reader, or gives exactly the rows Arrow's reader gives,
// and reading rows by preads or requests those rows read whole; it never
// panics, and
// never makes rows up.
func FuzzPickRows(f *testing.F) {
	ctx := context.Background()
	bucket, err := store.Open(ctx, "mem://")
	if err != nil {
		f.Fatal(err)
	}
	local, err := store.Open(ctx, "file://"+f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	mem := memory.NewGoAllocator()
	var batches []embed.Batch
	for b, n := range []int{3, 0, 2} {
		bt := embed.Batch{Dims: []int{4, 2}, Vectors: [][]float32{make([]float32, n*4), make([]float32, n*2)}}
		for i := range n {
			bt.Images = append(bt.Images, embed.Image{URI: fmt.Sprintf("img/%d-%d", b, i)})
		}
		for c := range bt.Vectors {
			for i := range bt.Vectors[c] {
				bt.Vectors[c][i] = float32(b*10+i) / 4
			}
		}
		batches = append(batches, bt)
	}
	for _, storedAs := range []string{"", schemas.Float16} {
		writeFile(f, bucket, "seed.arrow", batches, storedAs, mem)
		data, err := bucket.ReadAll(ctx, "seed.arrow")
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, false)
		f.Add(data, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, some bool) {
		if err := bucket.WriteAll(ctx, "f.arrow", data, nil); err != nil {
			t.Fatal(err)
		}
		af, err := store.OpenArrow(ctx, bucket, "f.arrow", mem)
		if err != nil {
			return // Arrow's reader refuses it before pickRows is asked
		}
		defer af.Close()
		schema := af.Schema()
		var idx, dims []int
		for i, fl := range schema.Fields() {
			if l, ok := fl.Type.(*arrow.FixedSizeListType); ok && i > 0 && (l.Elem().ID() == arrow.FLOAT32 || l.Elem().ID() == arrow.FLOAT16) {
				idx, dims = append(idx, i), append(dims, int(l.Len()))
			}
		}
		if len(idx) == 0 || len(af.Data) > 1<<16 {
			return
		}
		var p picker
		if some {
			p = picker{byIndex: true, rows: []int{1, 3}}
		}
		picked, ok, err := pickRows(whole(af.Data), len(af.Data), schema, idx, dims, p)
		if !ok || err != nil {
			return // Arrow's reader reads it, or it is damaged
		}
		want, err := arrowRows("f.arrow", af, make([]string, len(idx)), idx, dims, p)
		if err != nil {
			// What Arrow's reader refuses as damaged (a column shorter than
			// its batch, say) pickRows must not read as rows.
			t.Fatalf("pickRows read %d rows of a file Arrow's reader refuses: %v", len(picked[0].URIs), err)
		}
		for c := range idx {
			if !slices.Equal(picked[c].URIs, want[c].URIs) || !slices.EqualFunc(picked[c].Data, want[c].Data, func(a, b float32) bool {
				return math.Float32bits(a) == math.Float32bits(b)
			}) {
				t.Fatalf("column %d: pickRows read %v %v, Arrow's reader %v %v", idx[c], picked[c].URIs, picked[c].Data, want[c].URIs, want[c].Data)
			}
		}

		// Rows by index read by preads or requests are the rows read whole.
		rows := []int{0, 2, 3}
		read, ok, err := pickRows(whole(af.Data), len(af.Data), schema, idx, dims, picker{byIndex: true, rows: rows})
		names := make([]string, len(idx))
		for c, i := range idx {
			names[c] = schema.Field(i).Name
		}
		if !ok || err != nil || len(schema.FieldIndices(names[0])) != 1 {
			return
		}
		if err := local.WriteAll(ctx, "f.arrow", data, nil); err != nil {
			t.Fatal(err)
		}
		for name, b := range map[string]*blob.Bucket{"preads": local, "requests": bucket} {
			got, err := LoadRowsAt(ctx, b, "f.arrow", names[:1], rows, mem)
			if err != nil || !slices.Equal(got[0].URIs, read[0].URIs) || !slices.EqualFunc(got[0].Data, read[0].Data, func(a, b float32) bool {
				return math.Float32bits(a) == math.Float32bits(b)
			}) {
				t.Fatalf("rows %v by %s: %v; read whole %v %v", rows, name, err, read[0].URIs, read[0].Data)
			}
		}
	})
}

// A file Arrow's reader takes whose records claim more rows than its bytes
// could hold (a damaged count) is an error, not a fatal allocation of
// their size: a list column alone (no URIs), which only Arrow's reader
// reads, with its batch's and nodes' row counts raised to 2^40.
func TestArrowRowsClaimingTooMany(t *testing.T) {
	ctx := context.Background()
	mem := memory.NewGoAllocator()
	schema := arrow.NewSchema([]arrow.Field{{Name: "features", Type: arrow.FixedSizeListOf(4, arrow.PrimitiveTypes.Float32)}}, nil)
	const n = 291 // 0x123: its int64 bytes stand out in the metadata
	bld := array.NewRecordBuilder(mem, schema)
	defer bld.Release()
	list := bld.Field(0).(*array.FixedSizeListBuilder)
	for range n {
		list.Append(true)
		list.ValueBuilder().(*array.Float32Builder).AppendValues(make([]float32, 4), nil)
	}
	rec := bld.NewRecord()
	defer rec.Release()
	b, err := store.Open(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := store.WriteArrow(ctx, b, "f.arrow", schema, mem, rec); err != nil {
		t.Fatal(err)
	}
	data, err := b.ReadAll(ctx, "f.arrow")
	if err != nil {
		t.Fatal(err)
	}
	var count, huge [8]byte
	binary.LittleEndian.PutUint64(count[:], n)
	binary.LittleEndian.PutUint64(huge[:], 1<<40)
	patched := bytes.ReplaceAll(data, count[:], huge[:])
	if bytes.Equal(patched, data) {
		t.Fatal("no row count found to patch")
	}
	if err := b.WriteAll(ctx, "f.arrow", patched, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadColumns(ctx, b, "f.arrow", []string{"features"}, mem); err == nil || !strings.Contains(err.Error(), "rows by record") {
		t.Errorf("a file claiming 2^40 rows: %v, want an error saying it is damaged", err)
	}
}

// A feature file whose batch length, or one column's length, alone is
// damaged (fewer than its rows) is refused, not read as its first rows:
// each row count in the file, lowered on its own, is an error or changes
// nothing.
func TestDamagedRowCountRefused(t *testing.T) {
	ctx := context.Background()
	mem := memory.NewGoAllocator()
	b, err := store.Open(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const n = 291 // 0x123: its int64 bytes stand out in the metadata
	bt := embed.Batch{Dims: []int{4, 2}, Vectors: [][]float32{make([]float32, n*4), make([]float32, n*2)}}
	for i := range n {
		bt.Images = append(bt.Images, embed.Image{URI: fmt.Sprintf("img/%d", i)})
	}
	writeFile(t, b, "f.arrow", []embed.Batch{bt}, "", mem)
	data, err := b.ReadAll(ctx, "f.arrow")
	if err != nil {
		t.Fatal(err)
	}
	var count, fewer [8]byte
	binary.LittleEndian.PutUint64(count[:], n)
	binary.LittleEndian.PutUint64(fewer[:], n-35)
	patched := 0
	for at := bytes.Index(data, count[:]); at >= 0; {
		damaged := slices.Clone(data)
		copy(damaged[at:], fewer[:])
		if err := b.WriteAll(ctx, "d.arrow", damaged, nil); err != nil {
			t.Fatal(err)
		}
		ms, err := LoadColumns(ctx, b, "d.arrow", []string{"features"}, mem)
		if err == nil && len(ms[0].URIs) != n {
			t.Errorf("the count at byte %d lowered to %d: %d rows read, no error", at, n-35, len(ms[0].URIs))
		}
		patched++
		next := bytes.Index(data[at+1:], count[:])
		if next < 0 {
			break
		}
		at += 1 + next
	}
	if patched < 3 { // the batch's length, the URIs' and a list's
		t.Fatalf("%d row counts found to lower", patched)
	}
}
