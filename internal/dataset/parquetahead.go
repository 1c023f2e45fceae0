package dataset

import (
	"cmp"
	"context"
	"slices"
	"sync"

	"github.com/apache/arrow/go/v15/parquet/file"
)

// A Parquet reader reads each column chunk a buffer at a time, one read
// after another, and a manifest's few columns in turn: from a store that
// answers in 50 ms, a manifest of 10^9 rows (thousands of MiB reads) waits
// over ten minutes on the reads alone. columnReads reads the blocks of the
// manifest's columns ahead of the reader, each column as one sequence
// through the row groups, so a column's next row group has begun before
// its current one ends.
type columnReads struct {
	direct  *rangeReader // reads outside the columns' blocks
	ahead   *rangeReader // the blocks' reads, cancelled by close
	cancel  context.CancelFunc
	reading sync.WaitGroup
	tail    []byte // the file's last bytes: its footer, read at once
	mu      sync.Mutex
	cols    []*columnBlocks
}

// columnBlocks is one column's chunks, cut into blocks, in file order.
type columnBlocks struct {
	blocks []span
	reads  map[int]*blockRead // started and not yet passed
	next   int                // the first block not yet started
}

type span struct{ off, n int64 }

type blockRead struct {
	done chan struct{}
	data []byte
	err  error
}

// parquetBlock is a block's size (a reader's buffer, props.BufferSize)
// and blocksAhead how many blocks of each column are read ahead: 8 MiB of
// each column held. parquetTail is how much of the file's end is read
// first: the reader reads the footer's length, then the footer, two
// requests one after the other where one will do for most manifests.
const (
	parquetBlock = 1 << 20
	blocksAhead  = 8
	parquetTail  = 64 << 10
)

// newColumnReads reads the end of rr's file, then reads through rr, all of
// it straight until plan names the columns.
func newColumnReads(rr *rangeReader) (*columnReads, error) {
	// The tail's read sets the time every later read is checked against,
	// before the reads ahead take their copy.
	tail := make([]byte, min(rr.size, parquetTail))
	if len(tail) > 0 { // else the reader tells what is wrong with an empty file
		_, modified, err := rr.readAt(tail, rr.size-int64(len(tail)))
		if err != nil {
			return nil, err
		}
		rr.modified = modified
	}
	ahead := *rr
	var cancel context.CancelFunc
	ahead.ctx, cancel = context.WithCancel(rr.ctx)
	return &columnReads{direct: rr, ahead: &ahead, cancel: cancel, tail: tail}, nil
}

// plan reads the blocks of columns (leaf column indexes) of pf ahead.
func (c *columnReads) plan(pf *file.Reader, columns []int, firstGroup int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, col := range columns {
		if cb := c.blocksOf(pf, col, firstGroup); cb != nil {
			// Each column's first blocks at once, not each when the
			// reader comes to its column.
			for ; cb.next < min(blocksAhead, len(cb.blocks)); cb.next++ {
				cb.reads[cb.next] = c.start(cb.blocks[cb.next])
			}
			c.cols = append(c.cols, cb)
		}
	}
}

// blocksOf cuts column col's chunks into blocks; nil when the footer says
// what no file can hold (chunks out of order or past the file's end, or
// missing: the metadata's accessors panic), which the reader fails on,
// naming it.
func (c *columnReads) blocksOf(pf *file.Reader, col, firstGroup int) (cb *columnBlocks) {
	defer func() {
		if recover() != nil {
			cb = nil
		}
	}()
	cb = &columnBlocks{reads: map[int]*blockRead{}}
	last := int64(0)
	for g := firstGroup; g < pf.NumRowGroups(); g++ {
		cc, err := pf.MetaData().RowGroup(g).ColumnChunk(col)
		if err != nil {
			return nil
		}
		start := cc.DataPageOffset()
		if cc.HasDictionaryPage() && cc.DictionaryPageOffset() > 0 && start > cc.DictionaryPageOffset() {
			start = cc.DictionaryPageOffset()
		}
		size := cc.TotalCompressedSize()
		if start < last || size <= 0 || size > c.direct.size-start {
			return nil
		}
		for off := start; off < start+size; off += parquetBlock {
			cb.blocks = append(cb.blocks, span{off, min(parquetBlock, start+size-off)})
		}
		last = start + size
	}
	return cb
}

// close stops the reads ahead and waits for them to end.
func (c *columnReads) close() {
	c.cancel()
	c.reading.Wait()
}

// ReadAt reads p from the file's tail or the blocks that hold it, reading
// ahead of them, or straight from the store when p is within neither (a
// long footer, a damaged file's offsets).
func (c *columnReads) ReadAt(p []byte, off int64) (int, error) {
	if t, ok := c.inTail(off, int64(len(p))); ok {
		return copy(p, t), nil
	}
	waits, first := c.take(off, int64(len(p)))
	if waits == nil {
		return c.direct.ReadAt(p, off)
	}
	n := 0
	for _, r := range waits {
		select {
		case <-r.done:
		case <-c.ahead.ctx.Done():
			return n, c.ahead.ctx.Err()
		}
		if r.err != nil {
			return n, r.err
		}
		from := off + int64(n) - first
		n += copy(p[n:], r.data[from:])
		first += int64(len(r.data))
	}
	return n, nil
}

// take finds the blocks of one column that hold [off, off+n), drops the
// column's blocks before them, which its reader has passed, and starts the
// reads of those blocks and of blocksAhead after them. It returns the
// reads in order and the first one's offset; nil when no column's blocks
// hold the range.
func (c *columnReads) take(off, n int64) ([]*blockRead, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cb := range c.cols {
		i, found := slices.BinarySearchFunc(cb.blocks, off, func(s span, off int64) int { return cmp.Compare(s.off, off) })
		if !found {
			i--
		}
		if i < 0 || off >= cb.blocks[i].off+cb.blocks[i].n {
			continue
		}
		j := i
		for end := off + n; cb.blocks[j].off+cb.blocks[j].n < end; j++ {
			if j+1 == len(cb.blocks) || cb.blocks[j+1].off != cb.blocks[j].off+cb.blocks[j].n {
				return nil, 0 // past the chunk's end
			}
		}
		for k := range cb.reads {
			if k < i {
				delete(cb.reads, k)
			}
		}
		for k := max(i, cb.next); k < min(j+1+blocksAhead, len(cb.blocks)); k++ {
			cb.reads[k] = c.start(cb.blocks[k])
			cb.next = k + 1
		}
		waits := make([]*blockRead, 0, j-i+1)
		for k := i; k <= j; k++ {
			r, ok := cb.reads[k]
			if !ok { // read and dropped before: the reader went back
				r = c.start(cb.blocks[k])
				cb.reads[k] = r
			}
			waits = append(waits, r)
		}
		return waits, cb.blocks[i].off
	}
	return nil, 0
}

// inTail is [off, off+n) of the file's tail, if the tail holds it.
func (c *columnReads) inTail(off, n int64) ([]byte, bool) {
	tailOff := c.direct.size - int64(len(c.tail))
	if off < tailOff || off+n > c.direct.size {
		return nil, false
	}
	return c.tail[off-tailOff : off-tailOff+n], true
}

// start reads a block, from the tail if it holds it (a small manifest's
// every block).
func (c *columnReads) start(s span) *blockRead {
	r := &blockRead{done: make(chan struct{})}
	if t, ok := c.inTail(s.off, s.n); ok {
		r.data = t
		close(r.done)
		return r
	}
	c.reading.Add(1)
	go func() {
		defer c.reading.Done()
		defer close(r.done)
		r.data = make([]byte, s.n)
		var n int
		n, r.err = c.ahead.ReadAt(r.data, s.off)
		r.data = r.data[:n]
	}()
	return r
}

// Seek is the Parquet reader's way to learn the file's size.
func (c *columnReads) Seek(offset int64, whence int) (int64, error) {
	return c.direct.Seek(offset, whence)
}
