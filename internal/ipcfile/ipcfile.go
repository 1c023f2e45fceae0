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
	"encoding/binary"
	"errors"
	"fmt"
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
	FieldChildren        = 5
	FieldCustomMetadata  = 6
)

// BlockSize is the size of a footer's Block struct {offset int64,
// metaDataLength int32 (padded), bodyLength int64}.
const BlockSize = 24

// Footer is the root table of an IPC file's footer, after the magic and
// the footer's length are checked.
func Footer(data []byte) (footer Table, err error) {
	if len(data) < 16 || string(data[:6]) != "ARROW1" || string(data[len(data)-6:]) != "ARROW1" {
		return Table{}, errors.New("not an Arrow IPC file (no magic at its start and end: truncated?)")
	}
	n := int64(int32(binary.LittleEndian.Uint32(data[len(data)-10:])))
	if n < 8 || n > int64(len(data)-18) {
		return Table{}, fmt.Errorf("damaged IPC file: a footer of %d bytes in a file of %d", n, len(data))
	}
	err = Safely(func() error {
		footer = Root(data[len(data)-10-int(n) : len(data)-10])
		return nil
	})
	return footer, err
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
	meta := data[blk.Offset : blk.Offset+blk.MetaLen]
	if binary.LittleEndian.Uint32(meta) == 0xFFFFFFFF { // continuation marker, then the length
		meta = meta[8:]
	} else {
		meta = meta[4:]
	}
	msg := Root(meta)
	return msg.U8(1), msg.Table(2), data[blk.Offset+blk.MetaLen : blk.Offset+blk.MetaLen+blk.BodyLen]
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
// buffer of a batch its body. Arrow allocates a compressed buffer's size
// as it says before inflating it, so a compressed batch is refused too:
// DCD writes none.
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
		for _, slot := range []int{FooterDictionaries, FooterRecordBatches} {
			blocks, err := Blocks(footer, slot, len(data))
			if err != nil {
				return err
			}
			for i, blk := range blocks {
				if err := checkBatch(data, blk); err != nil {
					return fmt.Errorf("damaged IPC file: block %d: %w", i, err)
				}
			}
		}
		return nil
	})
}

// checkBatch checks the buffers of the record batch, or dictionary batch,
// at blk against its body.
func checkBatch(data []byte, blk Block) error {
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
	rb.Vector(BatchNodes, NodeSize)
	_, n := rb.Vector(BatchBuffers, BufferSize)
	for i := range n {
		off, length := Buffer(rb, i)
		if off < 0 || length < 0 || off > len(body) || length > len(body)-off {
			return fmt.Errorf("buffer %d (%d bytes at %d) is not within its body's %d", i, length, off, len(body))
		}
	}
	return nil
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
