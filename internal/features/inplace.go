package features

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/apache/arrow/go/v15/arrow"

	"dcd/internal/half"
	"dcd/internal/ipcfile"
)

// pickRows copies rows of a feature file into matrices in place, reading
// the IPC footer and record-batch metadata itself. Arrow's reader copies
// every record's body, then every buffer out of it, before a row can be
// taken; here each row is copied once, into its matrix.
//
// The file is f, of size bytes: read whole (LoadColumns), or by ranges
// (LoadRowsAt), when it reads only what p picks of it.
//
// It reads the layout DCD writes: a string column of URIs first, then
// fixed-size lists of float32 or float16, no nulls, no compression. For
// anything else it reports ok false, and the caller reads the file with
// Arrow. idx and dims are each column's field index and width in schema.
func pickRows(f file, size int, schema *arrow.Schema, idx, dims []int, p picker) (ms []*Matrix, ok bool, err error) {
	defer func() {
		if r := recover(); r != nil { // an offset past the end: a damaged file
			if _, bug := r.(notFetched); bug {
				panic(r)
			}
			ms, ok, err = nil, true, fmt.Errorf("damaged IPC file: %v", r)
		}
	}()
	l, ok := newLayout(schema, idx, dims)
	if !ok {
		return nil, false, nil
	}
	n, err := ipcfile.FooterLen(f.at(size-10, 10), size)
	if err != nil {
		return nil, true, err
	}
	if err := f.fetch([]span{{size - 10 - n, n}}); err != nil {
		return nil, true, err
	}
	footer := ipcfile.Root(f.at(size-10-n, n))
	if footer.Table(ipcfile.FooterSchema).U8(ipcfile.SchemaEndianness) != 0 { // big
		return nil, false, nil
	}
	blocks, err := ipcfile.Blocks(footer, ipcfile.FooterRecordBatches, size)
	if err != nil {
		return nil, true, err
	}
	metas := make([]span, len(blocks))
	for i, blk := range blocks {
		metas[i] = span{blk.Offset, blk.MetaLen}
	}
	if err := f.fetch(metas); err != nil {
		return nil, true, err
	}

	// The record batches: where each one's buffers are, and its rows, all
	// counted before the matrices are sized.
	batches := make([]batch, len(blocks))
	bodies, total := 0, 0 // bodies summed: a footer listing one batch many times is damaged
	for b, blk := range blocks {
		kind, rb := ipcfile.Header(f.at(blk.Offset, blk.MetaLen))
		if kind != ipcfile.RecordBatchMessage || rb.Field(ipcfile.BatchCompression) != 0 {
			return nil, false, nil
		}
		nodes, nnodes := rb.Vector(ipcfile.BatchNodes, ipcfile.NodeSize)
		if nnodes != len(l.nodeRows) {
			return nil, true, fmt.Errorf("damaged IPC file: batch %d has %d field nodes, its schema %d", b, nnodes, len(l.nodeRows))
		}
		for n := range nnodes {
			if le64(rb.B, nodes+ipcfile.NodeSize*n+8) != 0 {
				return nil, false, nil // nulls: Arrow's reader knows them
			}
		}
		if _, nb := rb.Vector(ipcfile.BatchBuffers, ipcfile.BufferSize); nb != l.nbuf {
			return nil, false, nil
		}
		bt := batch{rb, blk.Offset + blk.MetaLen, blk.BodyLen, int(rb.I64(ipcfile.BatchLength)), total}
		// The row counts size what is allocated: each batch's must fit its
		// buffers, and the bodies the file, before they are trusted.
		if bodies += blk.BodyLen; bodies > size {
			return nil, true, fmt.Errorf("damaged IPC file: its batches' bodies add up to more than its %d bytes", size)
		}
		// (Divided, not multiplied, so no count overflows; rows+1 URI
		// offsets, none for an empty batch.)
		fits := bt.rows >= 0 && (bt.rows == 0 || bt.rows <= (bt.buffer(l.uriOffsets).n-4)/4)
		for c := range idx {
			fits = fits && (l.rowBytes[c] == 0 || bt.rows <= bt.buffer(l.values[c]).n/l.rowBytes[c])
		}
		if !fits {
			return nil, true, fmt.Errorf("damaged IPC file: batch %d claims %d rows, more than its buffers hold", b, bt.rows)
		}
		// Each column's length is the batch's (its values', the rows
		// times its width): a batch whose length alone was damaged
		// would lose its last rows unseen, as Arrow's reader does not.
		for n, per := range l.nodeRows {
			if got := le64(rb.B, nodes+ipcfile.NodeSize*n); got != uint64(bt.rows)*uint64(per) {
				return nil, true, fmt.Errorf("damaged IPC file: batch %d claims %d rows, its field node %d holds %d values", b, bt.rows, n, got)
			}
		}
		batches[b] = bt
		total += bt.rows
	}

	kept, err := p.pick(f, l, batches, total)
	if err != nil {
		return nil, true, err
	}
	ms = make([]*Matrix, len(idx))
	nkept := 0
	for b, k := range kept {
		nkept += k.n(batches[b])
	}
	uris := make([]string, 0, nkept)
	for b, k := range kept {
		uris = batches[b].appendURIs(uris, f, l, k)
	}
	for c := range ms {
		m := &Matrix{Dim: dims[c], URIs: uris, Data: make([]float32, nkept*dims[c])}
		d, rb, at := dims[c], l.rowBytes[c], 0
		for b, k := range kept {
			values := batches[b].buffer(l.values[c])
			// Runs of consecutive rows (a whole batch, when every row is
			// kept) are copied at once.
			for lo, hi := range k.runs(batches[b]) {
				run := f.at(values.off+lo*rb, (hi-lo)*rb) // little-endian, as written
				n := (hi - lo) * d
				if rb == 4*d {
					copy(m.Data[at:at+n], arrow.Float32Traits.CastFromBytes(run))
				} else {
					half.ToFloat32s(m.Data[at:at+n], arrow.Uint16Traits.CastFromBytes(run))
				}
				at += n
			}
		}
		ms[c] = m
	}
	return ms, true, nil
}

// layout is where a record batch of a feature file holds its URIs and
// each wanted column's values, by buffer index, and the bytes of a row's
// values.
type layout struct {
	nbuf                int   // buffers a batch lists
	nodeRows            []int // each field node's values a row: 1, or a list's width
	uriOffsets, uriText int
	values, rowBytes    []int // by wanted column
}

func newLayout(schema *arrow.Schema, idx, dims []int) (layout, bool) {
	var l layout
	// The buffers of each field, in the order a record batch lists them.
	first := make([]int, schema.NumFields()) // the field's validity buffer
	for i, f := range schema.Fields() {
		first[i] = l.nbuf
		switch t := f.Type.(type) {
		case *arrow.StringType:
			l.nbuf += 3 // validity, offsets, bytes
			l.nodeRows = append(l.nodeRows, 1)
		case *arrow.FixedSizeListType:
			switch t.Elem().ID() {
			case arrow.FLOAT32, arrow.FLOAT16:
				// Buffers: the list's validity, the values' validity,
				// the values. Nodes: the list, its values.
				l.nbuf += 3
				l.nodeRows = append(l.nodeRows, 1, int(t.Len()))
			default:
				return l, false
			}
		default:
			return l, false
		}
	}
	if _, isString := schema.Field(0).Type.(*arrow.StringType); !isString {
		return l, false
	}
	l.values, l.rowBytes = make([]int, len(idx)), make([]int, len(idx))
	for c, i := range idx {
		l.values[c], l.rowBytes[c] = first[i]+2, 4*dims[c]
		if schema.Field(i).Type.(*arrow.FixedSizeListType).Elem().ID() == arrow.FLOAT16 {
			l.rowBytes[c] = 2 * dims[c]
		}
	}
	l.uriOffsets, l.uriText = first[0]+1, first[0]+2
	return l, true
}

// batch is a record batch of a feature file.
type batch struct {
	meta         ipcfile.Table // its RecordBatch
	body, bodyN  int           // where its body is in the file
	rows, before int           // its rows, and the file's rows before them
}

// buffer is where the batch's buffer i is in the file.
func (bt batch) buffer(i int) span {
	o, n := ipcfile.Buffer(bt.meta, i)
	if o < 0 || n < 0 || o > bt.bodyN || n > bt.bodyN-o {
		panic(fmt.Sprintf("buffer %d (%d bytes at %d) outside its body's %d", i, n, o, bt.bodyN))
	}
	return span{bt.body + o, n}
}

// uriSpan is where the batch's URI offsets and text are, one span. (The
// text follows the offsets in a file Arrow wrote; in a damaged one it may
// not.)
func (bt batch) uriSpan(l layout) span {
	offsets, text := bt.buffer(l.uriOffsets), bt.buffer(l.uriText)
	lo := min(offsets.off, text.off)
	return span{lo, max(offsets.off+offsets.n, text.off+text.n) - lo}
}

// appendURIs appends the URIs of the batch's rows k keeps to uris: every
// one a slice of one string when it keeps them all, else each its own.
func (bt batch) appendURIs(uris []string, f file, l layout, k kept) []string {
	if !k.all && len(k.rows) == 0 {
		return uris
	}
	offsets, text := bt.buffer(l.uriOffsets), bt.buffer(l.uriText)
	o, t := f.at(offsets.off, offsets.n), string(f.at(text.off, text.n))
	for lo, hi := range k.runs(bt) {
		for r := lo; r < hi; r++ {
			uri := t[binary.LittleEndian.Uint32(o[4*r:]):binary.LittleEndian.Uint32(o[4*r+4:])]
			if !k.all {
				uri = strings.Clone(uri) // a few: not to pin the batch's URIs
			}
			uris = append(uris, uri)
		}
	}
	return uris
}

// rowSpans are where the batch's URIs are and its rows' values.
func (bt batch) rowSpans(l layout, rows []int) []span {
	spans := []span{bt.uriSpan(l)}
	for c := range l.values {
		values := bt.buffer(l.values[c])
		for _, r := range rows {
			spans = append(spans, span{values.off + r*l.rowBytes[c], l.rowBytes[c]})
		}
	}
	return spans
}

// kept is the rows a picker keeps of a batch: all, or rows, in order.
type kept struct {
	all  bool
	rows []int
}

// n is how many rows of bt k keeps.
func (k kept) n(bt batch) int {
	if k.all {
		return bt.rows
	}
	return len(k.rows)
}

// runs yields the runs of consecutive rows k keeps of bt, [lo, hi).
func (k kept) runs(bt batch) func(yield func(lo, hi int) bool) {
	return func(yield func(lo, hi int) bool) {
		if k.all {
			if bt.rows > 0 {
				yield(0, bt.rows)
			}
			return
		}
		for i := 0; i < len(k.rows); {
			j := i + 1
			for j < len(k.rows) && k.rows[j] == k.rows[j-1]+1 {
				j++
			}
			if !yield(k.rows[i], k.rows[j-1]+1) {
				return
			}
			i = j
		}
	}
}

// picker says which rows of a file pickRows (or arrowRows) copies: by
// index, rows, the file's rows by index, ascending (none when empty);
// else every row.
type picker struct {
	byIndex bool
	rows    []int
}

// keeps says whether the picker keeps row i.
func (p picker) keeps(i int) bool {
	if !p.byIndex {
		return true
	}
	_, found := slices.BinarySearch(p.rows, i)
	return found
}

// pick chooses the rows of each batch, reading what it needs of f first.
func (p picker) pick(f file, l layout, batches []batch, total int) ([]kept, error) {
	if p.byIndex {
		return p.atRows(f, l, batches, total)
	}
	ks := make([]kept, len(batches))
	for b := range ks {
		ks[b].all = true
	}
	return ks, nil
}

// atRows picks p.rows, fetching their URIs and values alone.
func (p picker) atRows(f file, l layout, batches []batch, total int) ([]kept, error) {
	ks := make([]kept, len(batches))
	var spans []span
	i := 0
	for b, bt := range batches {
		for ; i < len(p.rows) && p.rows[i] < bt.before+bt.rows; i++ {
			ks[b].rows = append(ks[b].rows, p.rows[i]-bt.before)
		}
		if len(ks[b].rows) == 0 {
			continue
		}
		spans = append(spans, bt.rowSpans(l, ks[b].rows)...)
	}
	if i < len(p.rows) {
		return nil, rowPastEnd(p.rows[i], total)
	}
	return ks, f.fetch(spans)
}

func rowPastEnd(row, rows int) error { return fmt.Errorf("row %d of a file of %d", row, rows) }

// checkIndices refuses row indices that are not ascending, or negative.
func checkIndices(rows []int) error {
	for i, r := range rows {
		if r < 0 || i > 0 && r <= rows[i-1] {
			return fmt.Errorf("rows %v: want indices, ascending", rows[max(i-1, 0):i+1])
		}
	}
	return nil
}

func le64(b []byte, at int) uint64 { return binary.LittleEndian.Uint64(b[at:]) }
