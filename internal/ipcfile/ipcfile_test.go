package ipcfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"github.com/apache/arrow/go/v15/arrow/ipc"
	"github.com/apache/arrow/go/v15/arrow/memory"
)

// Check passes a file Arrow wrote and refuses the damage that would have
// Arrow's reader allocate by counts the file cannot hold: crashes no
// recover catches, found by FuzzPickRows (internal/features).
func TestCheck(t *testing.T) {
	data := arrowFile(t)
	if err := Check(data); err != nil {
		t.Fatalf("a file Arrow wrote: %v", err)
	}
	footer, err := Footer(data)
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := Blocks(footer, FooterRecordBatches, len(data))
	if err != nil || len(blocks) != 2 {
		t.Fatalf("blocks %v, %v; want the 2 record batches", blocks, err)
	}
	at := len(data) - 10 - len(footer.B) // where the footer starts in data

	// 2^31 - 1 fields in the schema.
	schema := footer.Table(FooterSchema)
	fields, _ := schema.Vector(SchemaFields, 4)
	many := slices.Clone(data)
	binary.LittleEndian.PutUint32(many[at+fields-4:], 1<<31-1)
	// A record batch's body of 2^40 bytes.
	bodies, _ := footer.Vector(FooterRecordBatches, BlockSize)
	huge := slices.Clone(data)
	binary.LittleEndian.PutUint64(huge[at+bodies+BlockSize+16:], 1<<40)
	// A URI buffer of 2^40 bytes.
	buffer := slices.Clone(data)
	_, rb, _ := Message(buffer, blocks[0])
	start, _ := rb.Vector(BatchBuffers, BufferSize)
	binary.LittleEndian.PutUint64(rb.B[start+BufferSize+8:], 1<<40) // buffer 1 (the URIs' offsets)'s length
	// A batch listing one of its six buffers (Arrow's reader took the
	// bytes after the vector as the rest).
	few := slices.Clone(data)
	_, rb, _ = Message(few, blocks[0])
	start, _ = rb.Vector(BatchBuffers, BufferSize)
	binary.LittleEndian.PutUint32(rb.B[start-4:], 1)
	// The footer listing batch 0 twice (Arrow's reader copied its rows
	// again for each: a footer of many such blocks, far more memory than
	// the file holds).
	twice := slices.Clone(data)
	copy(twice[at+bodies+BlockSize:], twice[at+bodies:at+bodies+BlockSize])
	// A footer longer than the file.
	long := slices.Clone(data)
	binary.LittleEndian.PutUint32(long[len(long)-10:], uint32(len(data)))

	for _, c := range []struct {
		name, data []byte
		want       string
	}{
		{[]byte("2^31 fields"), many, "vector of 2147483647"},
		{[]byte("a body of 2^40 bytes"), huge, "block 1"},
		{[]byte("a buffer of 2^40 bytes"), buffer, "buffer 1"},
		{[]byte("too few buffers"), few, "1 buffers, where its schema needs 3 and 6"},
		{[]byte("one batch listed twice"), twice, "overlap"},
		{[]byte("a footer longer than the file"), long, "footer of"},
		{[]byte("cut short"), data[:len(data)-3], "magic"},
	} {
		err := Check(c.data)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
		}
	}
}

// Check passes files Arrow writes of every type it counts the buffers
// of, each column with values and nulls, which Arrow's reader reads back;
// it refuses a dictionary-encoded one.
func TestCheckCountsEveryType(t *testing.T) {
	mem := memory.NewGoAllocator()
	types := []arrow.DataType{
		arrow.Null, arrow.PrimitiveTypes.Int64, arrow.FixedWidthTypes.Float16, arrow.FixedWidthTypes.Boolean,
		&arrow.Decimal128Type{Precision: 10, Scale: 2}, arrow.FixedWidthTypes.Date32, arrow.FixedWidthTypes.Timestamp_ms,
		arrow.FixedWidthTypes.Duration_s, arrow.BinaryTypes.String, arrow.BinaryTypes.LargeString, arrow.BinaryTypes.Binary,
		&arrow.FixedSizeBinaryType{ByteWidth: 3}, arrow.ListOf(arrow.PrimitiveTypes.Int32), arrow.LargeListOf(arrow.BinaryTypes.String),
		arrow.FixedSizeListOf(2, arrow.PrimitiveTypes.Float32), arrow.StructOf(arrow.Field{Name: "a", Type: arrow.PrimitiveTypes.Int32, Nullable: true}),
		arrow.MapOf(arrow.BinaryTypes.String, arrow.PrimitiveTypes.Int32), arrow.ListViewOf(arrow.PrimitiveTypes.Int8),
		arrow.RunEndEncodedOf(arrow.PrimitiveTypes.Int32, arrow.PrimitiveTypes.Float32),
	}
	for _, typ := range types {
		schema := arrow.NewSchema([]arrow.Field{{Name: "c", Type: typ, Nullable: true}}, nil)
		rb := array.NewRecordBuilder(mem, schema)
		rb.Field(0).AppendEmptyValue()
		rb.Field(0).AppendNull()
		rb.Field(0).AppendEmptyValue()
		rec := rb.NewRecord()
		data := writeFile(t, schema, mem, rec)
		if err := Check(data); err != nil {
			t.Errorf("%s: %v", typ, err)
		}
		r, err := ipc.NewFileReader(bytes.NewReader(data))
		if err == nil {
			_, err = r.Record(0)
		}
		if err != nil {
			t.Errorf("%s: Arrow's reader: %v", typ, err)
		}
		rec.Release()
		rb.Release()
	}

	dict := &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int32, ValueType: arrow.BinaryTypes.String}
	schema := arrow.NewSchema([]arrow.Field{{Name: "c", Type: dict}}, nil)
	rb := array.NewRecordBuilder(mem, schema)
	defer rb.Release()
	rb.Field(0).(*array.BinaryDictionaryBuilder).AppendString("x")
	rec := rb.NewRecord()
	defer rec.Release()
	if err := Check(writeFile(t, schema, mem, rec)); err == nil || !strings.Contains(err.Error(), "dictionar") {
		t.Errorf("a dictionary-encoded field: %v, want refused", err)
	}
}

// writeFile is recs as an IPC file, as Arrow's writer writes it.
func writeFile(t *testing.T, schema *arrow.Schema, mem memory.Allocator, recs ...arrow.Record) []byte {
	t.Helper()
	var buf seekless
	w, err := ipc.NewFileWriter(&buf, ipc.WithSchema(schema), ipc.WithAllocator(mem))
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		if err := w.Write(rec); err != nil {
			t.Fatalf("%s: %v", schema, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// arrowFile is an IPC file of two record batches of a URI and a
// fixed-size list, as Arrow's writer writes it.
func arrowFile(t *testing.T) []byte {
	mem := memory.NewGoAllocator()
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "uri", Type: arrow.BinaryTypes.String},
		{Name: "features", Type: arrow.FixedSizeListOf(2, arrow.PrimitiveTypes.Float32)},
	}, nil)
	var recs []arrow.Record
	for _, uri := range []string{"a", "b"} {
		rb := array.NewRecordBuilder(mem, schema)
		rb.Field(0).(*array.StringBuilder).Append(uri)
		lb := rb.Field(1).(*array.FixedSizeListBuilder)
		lb.Append(true)
		lb.ValueBuilder().(*array.Float32Builder).AppendValues([]float32{1, 2}, nil)
		rec := rb.NewRecord()
		defer rec.Release()
		recs = append(recs, rec)
		rb.Release()
	}
	return writeFile(t, schema, mem, recs...)
}

// seekless is a buffer whose Seek only answers where it is, all Arrow's
// writer asks.
type seekless struct{ bytes.Buffer }

func (s *seekless) Seek(offset int64, whence int) (int64, error) {
	if offset != 0 || whence != io.SeekCurrent {
		return 0, errors.New("seekless: only Seek(0, io.SeekCurrent)")
	}
	return int64(s.Len()), nil
}
