// Package ipcfile reads the metadata of Arrow IPC files from their bytes:
// the footer, and the flatbuffer tables of the schema and record batches
// (Arrow's format/File.fbs, Schema.fbs, Message.fbs), checking each count
// and offset it follows against the bytes there are.
//
// Arrow's reader trusts them: a damaged file's offset past the end is a
// panic, and a count of 2^31 fields or a body of 2^40 bytes an
// out-of-memory crash, which no recover catches. Check refuses such a file
// before Arrow's reader sees it; features reads DCD's own feature files in
// place with the same tables.
package ipcfile

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// Footer slots (File.fbs).
const (
	FooterSchema        = 1
	FooterDictionaries  = 2
	FooterRecordBatches = 3
)

// Schema and Field slots (Schema.fbs).
const (
	SchemaEndianness     = 0
	SchemaFields         = 1
	SchemaCustomMetadata = 2
	FieldName            = 0
	FieldTypeType        = 2
	FieldType            = 3
	FieldDictionary      = 4
	FieldChildren        = 5
	FieldCustomMetadata  = 6
)

// Types of a field (Schema.fbs's Type union) that Fields describes.
const (
	TypeFloatingPoint = 3
	TypeUtf8          = 5
	TypeFixedSizeList = 16
)

// Field is a field of a schema as Fields reads it: its name and type;
// for a FixedSizeList its size and its values' type, for a FloatingPoint
// its precision (0 half, 1 single, 2 double).
type Field struct {
	Name      string
	Type      byte
	ListSize  int
	Elem      byte
	Precision int
}

// Fields are the top-level fields of the footer's schema, checked as
// Check does.
func Fields(footer Table) (fields []Field, err error) {
	return FieldsOf(footer.Table(FooterSchema))
}

// FieldsOf are the top-level fields of a Schema table: the footer's, or a
// Schema message's header.
func FieldsOf(schema Table) (fields []Field, err error) {
	err = Safely(func() error {
		if err := checkFields(schema, SchemaFields, 0); err != nil {
			return err
		}
		start, n := schema.Vector(SchemaFields, 4)
		for i := range n {
			f := schema.Element(start, i)
			fd := Field{Name: f.String(FieldName), Type: f.U8(FieldTypeType)}
			switch fd.Type {
			case TypeFixedSizeList:
				fd.ListSize = int(f.Table(FieldType).I32(0)) // listSize
				if cs, nc := f.Vector(FieldChildren, 4); nc == 1 {
					c := f.Element(cs, 0)
					if fd.Elem = c.U8(FieldTypeType); fd.Elem == TypeFloatingPoint {
						fd.Precision = int(c.Table(FieldType).I16(0)) // precision
					}
				}
			case TypeFloatingPoint:
				fd.Precision = int(f.Table(FieldType).I16(0))
			}
			fields = append(fields, fd)
		}
		return nil
	})
	return fields, err
}

// BlockSize is the size of a footer's Block struct {offset int64,
// metaDataLength int32 (padded), bodyLength int64}.
const BlockSize = 24

// Footer is the root table of an IPC file's footer, after the magic and
// the footer's length are checked.
func Footer(data []byte) (footer Table, err error) {
	if len(data) < 16 || string(data[:6]) != "ARROW1" {
		return Table{}, errors.New("not an Arrow IPC file (no magic at its start)")
	}
	n, err := FooterLen(data, len(data))
	if err != nil {
		return Table{}, err
	}
	err = Safely(func() error {
		footer = Root(data[len(data)-10-n : len(data)-10])
		return nil
	})
	return footer, err
}

// FooterLen is the length of the footer of an IPC file of size bytes,
// read from tail, its last bytes (at least 10), after the magic at its end
// is checked: the footer is the FooterLen bytes before the last 10.
func FooterLen(tail []byte, size int) (int, error) {
	if size < 16 || len(tail) < 10 || string(tail[len(tail)-6:]) != "ARROW1" {
		return 0, errors.New("not an Arrow IPC file (no magic at its end: truncated?)")
	}
	n := int64(int32(binary.LittleEndian.Uint32(tail[len(tail)-10:])))
	if n < 8 || n > int64(size-18) {
		return 0, fmt.Errorf("damaged IPC file: a footer of %d bytes in a file of %d", n, size)
	}
	return int(n), nil
}

// Block is where a record batch's (or dictionary's) message is in the file.
type Block struct {
	Offset, MetaLen, BodyLen int
}

// Blocks are the footer's blocks in slot (FooterRecordBatches or
// FooterDictionaries), each checked to lie in the file's first fileLen
// bytes, before its footer.
func Blocks(footer Table, slot, fileLen int) ([]Block, error) {
	start, n := footer.Vector(slot, BlockSize)
	blocks := make([]Block, n)
	end := int64(fileLen - 10 - len(footer.B))
	for i := range blocks {
		at := start + BlockSize*i
		off := int64(binary.LittleEndian.Uint64(footer.B[at:]))
		meta := int64(int32(binary.LittleEndian.Uint32(footer.B[at+8:])))
		body := int64(binary.LittleEndian.Uint64(footer.B[at+16:]))
		if off < 8 || meta < 8 || body < 0 || off > end || meta > end-off || body > end-off-meta {
			return nil, fmt.Errorf("damaged IPC file: block %d (offset %d, metadata %d and body %d bytes) is not within the file's %d", i, off, meta, body, end)
		}
		blocks[i] = Block{int(off), int(meta), int(body)}
	}
	return blocks, nil
}

// Message header types (Message.fbs).
const (
	SchemaMessage          = 1
	DictionaryBatchMessage = 2
	RecordBatchMessage     = 3
)

// RecordBatch slots (Message.fbs).
const (
	BatchLength      = 0
	BatchNodes       = 1
	BatchBuffers     = 2
	BatchCompression = 3
)

// NodeSize and BufferSize are the sizes of a RecordBatch's FieldNode
// {length, null_count int64} and Buffer {offset, length int64} structs.
const (
	NodeSize   = 16
	BufferSize = 16
)

// Message is the message at blk: its header's type and table, and its
// body.
func Message(data []byte, blk Block) (kind byte, header Table, body []byte) {
	kind, header = Header(data[blk.Offset : blk.Offset+blk.MetaLen])
	return kind, header, data[blk.Offset+blk.MetaLen : blk.Offset+blk.MetaLen+blk.BodyLen]
}

// Header is the type and table of the header of a message's metadata,
// the MetaLen bytes at a block's offset.
func Header(meta []byte) (kind byte, header Table) {
	if binary.LittleEndian.Uint32(meta) == 0xFFFFFFFF { // continuation marker, then the length
		meta = meta[8:]
	} else {
		meta = meta[4:]
	}
	msg := Root(meta)
	return msg.U8(1), msg.Table(2)
}

// Buffer is where buffer i of a RecordBatch is in its body.
func Buffer(rb Table, i int) (offset, length int) {
	start, _ := rb.Vector(BatchBuffers, BufferSize)
	at := start + BufferSize*i
	return int(binary.LittleEndian.Uint64(rb.B[at:])), int(binary.LittleEndian.Uint64(rb.B[at+8:]))
}

// Check refuses an IPC file that would have Arrow's reader read or
// allocate past its bytes: each vector of the schema and its fields
// (nested ones too) must fit the footer, each block the file, and each
// buffer of a batch its body, and a batch must list the buffers its
// schema needs (needs). Arrow allocates a compressed buffer's size as it
// says before inflating it, so a compressed batch is refused too, as are
// dictionaries, which a batch's needs cannot be told for: DCD writes
// neither.
func Check(data []byte) error {
	return Safely(func() error {
		footer, err := Footer(data)
		if err != nil {
			return err
		}
		schema := footer.Table(FooterSchema)
		schema.Vector(SchemaCustomMetadata, 4)
		if err := checkFields(schema, SchemaFields, 0); err != nil {
			return err
		}
		nodes, buffers, err := needs(schema, SchemaFields, 0)
		if err != nil {
			return err
		}
		// Arrow's reader loads every dictionary batch as it opens a file,
		// a value type's buffers by index as a record's: DCD writes none.
		if _, n := footer.Vector(FooterDictionaries, BlockSize); n != 0 {
			return fmt.Errorf("damaged IPC file: %d dictionary batches (DCD writes none)", n)
		}
		blocks, err := Blocks(footer, FooterRecordBatches, len(data))
		if err != nil {
			return err
		}
		if err := apart(blocks); err != nil {
			return err
		}
		for i, blk := range blocks {
			if err := checkBatch(data, blk, nodes, buffers); err != nil {
				return fmt.Errorf("damaged IPC file: block %d: %w", i, err)
			}
		}
		return nil
	})
}

// apart checks that no two blocks share bytes, as a writer lays them out:
// a footer listing one batch many times had Arrow's reader copy its rows
// as many times, far more memory than the file's size.
func apart(blocks []Block) error {
	sorted := slices.SortedFunc(slices.Values(blocks), func(a, b Block) int { return cmp.Compare(a.Offset, b.Offset) })
	for i := 1; i < len(sorted); i++ {
		if prev := sorted[i-1]; prev.Offset+prev.MetaLen+prev.BodyLen > sorted[i].Offset {
			return fmt.Errorf("damaged IPC file: blocks at %d and %d overlap", prev.Offset, sorted[i].Offset)
		}
	}
	return nil
}

// checkBatch checks the buffers of the record batch, or dictionary batch,
// at blk against its body, and that it lists at least the field nodes and
// buffers its schema needs (needs).
func checkBatch(data []byte, blk Block, nodes, buffers int) error {
	kind, rb, body := Message(data, blk)
	switch kind {
	case DictionaryBatchMessage:
		rb = rb.Table(1) // its data
	case RecordBatchMessage:
	default:
		return fmt.Errorf("a message of type %d, want a record or dictionary batch", kind)
	}
	if rb.Field(BatchCompression) != 0 {
		return errors.New("compressed buffers (DCD writes none)")
	}
	_, nn := rb.Vector(BatchNodes, NodeSize)
	_, n := rb.Vector(BatchBuffers, BufferSize)
	if nn < nodes || n < buffers {
		return fmt.Errorf("%d field nodes and %d buffers, where its schema needs %d and %d", nn, n, nodes, buffers)
	}
	for i := range n {
		off, length := Buffer(rb, i)
		if off < 0 || length < 0 || off > len(body) || length > len(body)-off {
			return fmt.Errorf("buffer %d (%d bytes at %d) is not within its body's %d", i, length, off, len(body))
		}
	}
	return nil
}

// needs returns how many field nodes and buffers a record batch of the
// fields in slot of t lists. Arrow's reader takes each by its index, not
// checking it against the vector's length: a damaged batch listing fewer
// had it read what follows as a buffer, 5 TB long say, and allocate it.
// It counts the types DCD writes and their kin; a union or a view type,
// whose count depends on more than the type, is an error, as is a
// dictionary-encoded field (Check).
func needs(t Table, slot, depth int) (nodes, buffers int, err error) {
	if depth > maxDepth {
		return 0, 0, fmt.Errorf("damaged IPC file: fields nest more than %d deep", maxDepth)
	}
	start, n := t.Vector(slot, 4)
	for i := range n {
		f := t.Element(start, i)
		nodes++
		if f.Field(FieldDictionary) != 0 {
			return 0, 0, errors.New("damaged IPC file: a dictionary-encoded field (DCD writes none)")
		}
		switch typ := f.U8(FieldTypeType); typ {
		case 1, 22: // Null, RunEndEncoded: no buffer of its own
		case 13, 16: // Struct, FixedSizeList: validity
			buffers++
		case 2, 3, 6, 7, 8, 9, 10, 11, 15, 18, // fixed-width values
			12, 17, 21: // List, Map, LargeList: validity, offsets
			buffers += 2
		case 4, 5, 19, 20, // Binary, Utf8, LargeBinary, LargeUtf8
			25, 26: // ListView, LargeListView
			buffers += 3
		default:
			return 0, 0, fmt.Errorf("damaged IPC file: a field of type %d, which DCD does not read", typ)
		}
		cn, cb, err := needs(f, FieldChildren, depth+1)
		if err != nil {
			return 0, 0, err
		}
		nodes, buffers = nodes+cn, buffers+cb
	}
	return nodes, buffers, nil
}

// maxDepth bounds how deeply fields nest: a damaged offset may point a
// field's children back at itself.
const maxDepth = 64

func checkFields(t Table, slot, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("damaged IPC file: fields nest more than %d deep", maxDepth)
	}
	start, n := t.Vector(slot, 4)
	for i := range n {
		f := t.Element(start, i)
		f.Vector(FieldCustomMetadata, 4)
		if err := checkFields(f, FieldChildren, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// Safely runs read, a read of tables from a file's bytes, making a panic
// (an offset past the end of them) an error.
func Safely(read func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("damaged IPC file: %v", r)
		}
	}()
	return read()
}

// Table is a flatbuffer table: its buffer and position. Its accessors
// panic on an offset outside the buffer (see Safely).
type Table struct {
	B   []byte
	Pos int
}

// Root is the table a flatbuffer starts with.
func Root(b []byte) Table { return Table{b, int(binary.LittleEndian.Uint32(b))} }

// Field is the position of the table's field in slot, 0 when it is absent.
func (t Table) Field(slot int) int {
	vt := t.Pos - int(int32(binary.LittleEndian.Uint32(t.B[t.Pos:])))
	at := 4 + 2*slot
	if at >= int(binary.LittleEndian.Uint16(t.B[vt:])) {
		return 0
	}
	if off := int(binary.LittleEndian.Uint16(t.B[vt+at:])); off != 0 {
		return t.Pos + off
	}
	return 0
}

// I64 is the int64 field in slot, 0 when absent.
func (t Table) I64(slot int) int64 {
	if p := t.Field(slot); p != 0 {
		return int64(binary.LittleEndian.Uint64(t.B[p:]))
	}
	return 0
}

// I32 is the int32 field in slot, 0 when absent.
func (t Table) I32(slot int) int32 {
	if p := t.Field(slot); p != 0 {
		return int32(binary.LittleEndian.Uint32(t.B[p:]))
	}
	return 0
}

// I16 is the int16 field in slot, 0 when absent.
func (t Table) I16(slot int) int16 {
	if p := t.Field(slot); p != 0 {
		return int16(binary.LittleEndian.Uint16(t.B[p:]))
	}
	return 0
}

// String is the string field in slot, "" when absent.
func (t Table) String(slot int) string {
	p := t.Field(slot)
	if p == 0 {
		return ""
	}
	v := p + int(binary.LittleEndian.Uint32(t.B[p:]))
	n := int(binary.LittleEndian.Uint32(t.B[v:]))
	return string(t.B[v+4 : v+4+n])
}

// U8 is the byte-sized field in slot, 0 when absent.
func (t Table) U8(slot int) byte {
	if p := t.Field(slot); p != 0 {
		return t.B[p]
	}
	return 0
}

// Table is the table a field refers to; a missing one panics, as a
// damaged file's offsets do.
func (t Table) Table(slot int) Table {
	p := t.Field(slot)
	if p == 0 {
		panic(fmt.Sprintf("no table in slot %d", slot))
	}
	return Table{t.B, p + int(binary.LittleEndian.Uint32(t.B[p:]))}
}

// Vector is where a vector field's elements of size bytes start, and how
// many there are; it panics when they do not fit the buffer.
func (t Table) Vector(slot, size int) (start, n int) {
	p := t.Field(slot)
	if p == 0 {
		return 0, 0
	}
	v := p + int(binary.LittleEndian.Uint32(t.B[p:]))
	n = int(binary.LittleEndian.Uint32(t.B[v:]))
	if n > (len(t.B)-v-4)/size {
		panic(fmt.Sprintf("a vector of %d elements of %d bytes at %d of %d", n, size, v, len(t.B)))
	}
	return v + 4, n
}

// Element is the table element i of a vector of tables starting at start.
func (t Table) Element(start, i int) Table {
	p := start + 4*i
	return Table{t.B, p + int(binary.LittleEndian.Uint32(t.B[p:]))}
}
