package features

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/apache/arrow/go/v15/arrow"

	"dcd/internal/half"
	"dcd/internal/ipcfile"
)

// pickRows copies the rows whose URI keep accepts (every row when keep is
// nil) out of a feature file's bytes in place, reading the IPC footer and
// record-batch metadata itself. Arrow's reader copies every record's body,
// then every buffer out of it, before a row can be taken; here each row
// is copied once, into its matrix.
//
// It reads the layout DCD writes: a string column of URIs first, then
// fixed-size lists of float32 or float16, no nulls, no compression. For
// anything else it reports ok false, and the caller reads the file with
// Arrow. idx and dims are each column's field index and width in schema.
func pickRows(data []byte, schema *arrow.Schema, idx, dims []int, keep func(string) bool) (ms []*Matrix, ok bool, err error) {
	defer func() {
		if r := recover(); r != nil { // an offset past the end: a damaged file
			ms, ok, err = nil, true, fmt.Errorf("damaged IPC file: %v", r)
		}
	}()
	// The buffers of each field, in the order a record batch lists them.
	first := make([]int, schema.NumFields()) // the field's validity buffer
	nbuf := 0
	for i, f := range schema.Fields() {
		first[i] = nbuf
		switch t := f.Type.(type) {
		case *arrow.StringType:
			nbuf += 3 // validity, offsets, bytes
		case *arrow.FixedSizeListType:
			switch t.Elem().ID() {
			case arrow.FLOAT32, arrow.FLOAT16:
				nbuf += 3 // the list's validity, the values' validity, the values
			default:
				return nil, false, nil
			}
		default:
			return nil, false, nil
		}
	}
	if _, isString := schema.Field(0).Type.(*arrow.StringType); !isString {
		return nil, false, nil
	}
	// Each column's values buffer, and the bytes of a row's values in it.
	values, rowBytes := make([]int, len(idx)), make([]int, len(idx))
	for c, i := range idx {
		values[c], rowBytes[c] = first[i]+2, 4*dims[c]
		if schema.Field(i).Type.(*arrow.FixedSizeListType).Elem().ID() == arrow.FLOAT16 {
			rowBytes[c] = 2 * dims[c]
		}
	}
	uriOffsets, uriText := first[0]+1, first[0]+2 // the URIs' buffers

	footer, err := ipcfile.Footer(data)
	if err != nil {
		return nil, true, err
	}
	if footer.Table(ipcfile.FooterSchema).U8(ipcfile.SchemaEndianness) != 0 { // big
		return nil, false, nil
	}
	blocks, err := ipcfile.Blocks(footer, ipcfile.FooterRecordBatches, len(data))
	if err != nil {
		return nil, true, err
	}
	bodies := 0 // summed: a footer listing one batch many times is damaged

	// The record batches: where each one's metadata and body are, and its
	// rows, all counted before the matrices are sized.
	var batches []batch
	total := 0
	for b, blk := range blocks {
		kind, rb, body := ipcfile.Message(data, blk)
		if kind != ipcfile.RecordBatchMessage || rb.Field(ipcfile.BatchCompression) != 0 {
			return nil, false, nil
		}
		nodes, nnodes := rb.Vector(ipcfile.BatchNodes, ipcfile.NodeSize)
		for n := range nnodes {
			if le64(rb.B, nodes+ipcfile.NodeSize*n+8) != 0 {
				return nil, false, nil // nulls: Arrow's reader knows them
			}
		}
		if _, nb := rb.Vector(ipcfile.BatchBuffers, ipcfile.BufferSize); nb != nbuf {
			return nil, false, nil
		}
		bt := batch{rb, body, int(rb.I64(ipcfile.BatchLength))}
		// The row counts size what is allocated: each batch's must fit its
		// buffers, and the bodies the file, before they are trusted.
		if bodies += blk.BodyLen; bodies > len(data) {
			return nil, true, fmt.Errorf("damaged IPC file: its batches' bodies add up to more than its %d bytes", len(data))
		}
		// (Divided, not multiplied, so no count overflows; rows+1 URI
		// offsets, none for an empty batch.)
		fits := bt.rows >= 0 && (bt.rows == 0 || bt.rows <= (len(bt.buffer(uriOffsets))-4)/4)
		for c := range idx {
			fits = fits && (rowBytes[c] == 0 || bt.rows <= len(bt.buffer(values[c]))/rowBytes[c])
		}
		if !fits {
			return nil, true, fmt.Errorf("damaged IPC file: batch %d claims %d rows, more than its buffers hold", b, bt.rows)
		}
		batches = append(batches, bt)
		total += bt.rows
	}

	ms = make([]*Matrix, len(idx))
	for c := range ms {
		ms[c] = &Matrix{Dim: dims[c]}
		if keep == nil {
			ms[c].Data = make([]float32, 0, total*dims[c])
		}
	}
	var uris []string
	if keep == nil {
		uris = make([]string, 0, total)
	}
	for _, bt := range batches {
		offsets := bt.buffer(uriOffsets)
		text := string(bt.buffer(uriText)) // one string: every URI is a slice of it
		kept := make([]int, 0, bt.rows)
		for r := range bt.rows {
			uri := text[binary.LittleEndian.Uint32(offsets[4*r:]):binary.LittleEndian.Uint32(offsets[4*r+4:])]
			switch {
			case keep == nil:
				uris = append(uris, uri)
			case keep(uri):
				uris = append(uris, strings.Clone(uri)) // a few: not to pin the batch's URIs
			default:
				continue
			}
			kept = append(kept, r)
		}
		for c, m := range ms {
			buf, d := bt.buffer(values[c])[:bt.rows*rowBytes[c]], m.Dim // little-endian, as written
			if rowBytes[c] == 4*d {
				vs := arrow.Float32Traits.CastFromBytes(buf)
				for _, r := range kept {
					m.Data = append(m.Data, vs[r*d:(r+1)*d]...)
				}
				continue
			}
			hs := arrow.Uint16Traits.CastFromBytes(buf)
			for _, r := range kept {
				m.Data = append(m.Data, make([]float32, d)...)
				half.ToFloat32s(m.Data[len(m.Data)-d:], hs[r*d:(r+1)*d])
			}
		}
	}
	for _, m := range ms {
		m.URIs = uris
	}
	return ms, true, nil
}

// batch is a record batch of a feature file.
type batch struct {
	meta ipcfile.Table // its RecordBatch
	body []byte
	rows int
}

// buffer is the batch's buffer i.
func (bt batch) buffer(i int) []byte {
	o, n := ipcfile.Buffer(bt.meta, i)
	return bt.body[o : o+n]
}

func le64(b []byte, at int) uint64 { return binary.LittleEndian.Uint64(b[at:]) }
