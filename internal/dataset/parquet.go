package dataset

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"github.com/apache/arrow/go/v15/arrow/memory"
	"github.com/apache/arrow/go/v15/parquet"
	"github.com/apache/arrow/go/v15/parquet/file"
	"github.com/apache/arrow/go/v15/parquet/pqarrow"
	"gocloud.dev/blob"

	"dcd/internal/store"
)

// parquetBatch is how many manifest rows are decoded at a time.
const parquetBatch = 8192

// readParquet streams a Parquet manifest's uri, label, domain and version columns,
// one record batch at a time, reading the file by ranges so that a manifest
// of any size is never held whole in memory. From a mark (at.Next, the
// row) it reads the row groups from the mark's on.
func (s Source) readParquet(ctx context.Context, b *blob.Bucket, key string, at *Mark, emit func(row) error) (err error) {
	attrs, err := b.Attributes(ctx, key)
	if err != nil {
		return err
	}
	fileVersion := parquetVersion(attrs)
	if at.Next > 0 && at.Version != fileVersion {
		return ErrChanged
	}
	// A manifest rewritten while it is read fails whatever read met the
	// change (its ranges are checked against its first: rangeReader), and
	// the Parquet reader may report that as damage: it is a change, to be
	// walked again from the start.
	defer func() {
		if err == nil || errors.Is(err, ErrChanged) || ctx.Err() != nil {
			return
		}
		if now, aerr := b.Attributes(ctx, key); aerr == nil && parquetVersion(now) != fileVersion {
			err = fmt.Errorf("%w (reading it: %v)", ErrChanged, err)
		}
	}()
	// Every buffer the reader takes counts against a budget: values
	// under the caps below may still be many (16,000 distinct labels of
	// 60 KiB, a 239 KB file, were a 983 MB dictionary).
	mem := &budgetAllocator{Allocator: s.Mem, left: parquetMemory}
	ra, err := newColumnReads(&rangeReader{ctx: ctx, b: b, key: key, size: attrs.Size})
	if err != nil {
		return err
	}
	defer ra.close()
	props := parquet.NewReaderProperties(mem)
	props.BufferedStreamEnabled = true
	props.BufferSize = parquetBlock
	var pf *file.Reader
	err = safely(func() (err error) {
		pf, err = file.NewParquetReader(ra, file.WithReadProps(props))
		return err
	})
	if err != nil {
		return err
	}
	defer pf.Close()
	sc := pf.MetaData().Schema
	names := make([]string, sc.NumColumns())
	var nested []string // the nested columns' names, for an error
	inFile := false     // a struct with a "bytes" leaf: images held in the file
	for i := range names {
		// A leaf of a nested column (a list's "element", an image
		// struct's "bytes") is no column of the manifest's.
		p := sc.Column(i).ColumnPath()
		if len(p) == 1 {
			names[i] = p[0]
			continue
		}
		if !slices.Contains(nested, p[0]) {
			nested = append(nested, p[0])
		}
		inFile = inFile || p[len(p)-1] == "bytes"
	}
	c, err := columns(names)
	if err != nil && len(nested) > 0 {
		// Said of the top-level columns alone, not of "" for each leaf.
		if _, top := columns(slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == "" })); top != nil {
			err = top
		}
		err = fmt.Errorf("%w; nested columns, which are none of a manifest's, are %q", err, nested)
		if inFile {
			err = fmt.Errorf("%w: images held in the file, as Hugging Face's datasets write them, are not read; DCD reads each image from its uri, so write them out as files and list those", err)
		}
	}
	if err != nil {
		return err
	}
	// The record's columns: uri, label, then the optional ones it has.
	want := []int{c.uri, c.label}
	domain, version := -1, -1
	if c.domain >= 0 {
		domain, want = len(want), append(want, c.domain)
	}
	if c.version >= 0 {
		version, want = len(want), append(want, c.version)
	}
	// The row group the mark is in, and its rows before the mark.
	first, skip := 0, at.Next
	if err := safely(func() error {
		for ; first < pf.NumRowGroups() && skip >= pf.MetaData().RowGroup(first).NumRows(); first++ {
			skip -= pf.MetaData().RowGroup(first).NumRows()
		}
		return nil
	}); err != nil {
		return err
	}
	groups := make([]int, pf.NumRowGroups()-first)
	for i := range groups {
		groups[i] = first + i
	}
	if err := checkSizes(pf, want, names, groups); err != nil {
		return err
	}
	ra.plan(pf, want, first)
	// Each column is read by its own reader, in lockstep, rather than by
	// pqarrow's RecordReader: that one opens its columns on goroutines,
	// where a damaged file's panic crashes the worker (FuzzParquetManifest).
	readers := make([]*pqarrow.ColumnReader, len(want))
	defer func() {
		for _, r := range readers {
			if r != nil {
				r.Release()
			}
		}
	}()
	// Text columns are read as dictionaries where the file encodes them
	// so throughout: a value repeated on every row (a 37 KB file of
	// 20,000 labels of 256 KiB) is then held once, not once a row (10 GB
	// a batch). Not a column whose writer fell back to plain pages
	// (unique uris past a dictionary's megabyte): Arrow's dictionary
	// reader would keep every value read in its row group, in every batch.
	readProps := pqarrow.ArrowReadProperties{BatchSize: parquetBatch}
	for _, c := range want {
		if sc.Column(c).PhysicalType() == parquet.Types.ByteArray {
			readProps.SetReadDict(c, true)
		}
	}
	err = safely(func() error {
		fr, err := pqarrow.NewFileReader(pf, readProps, mem)
		for i := 0; err == nil && i < len(want); i++ {
			var fields []int
			if fields, err = fr.Manifest.GetFieldIndices(want[i : i+1]); err == nil {
				readers[i], err = fr.GetFieldReader(ctx, fields[0], map[int]bool{want[i]: true}, groups)
			}
		}
		return err
	})
	if err != nil {
		return err
	}
	for i, r := range readers {
		// A version is any value that changes with the image (a
		// timestamp, say), read as its text.
		if t := r.Field().Type; i != version && !stringLike(t) {
			return fmt.Errorf("column %q has type %s, want a string or integer column", names[want[i]], t)
		}
	}
	cols := make([]arrow.Array, len(readers))
	release := func() {
		for i, c := range cols {
			if c != nil {
				c.Release()
				cols[i] = nil
			}
		}
	}
	defer release()
	at.Version = fileVersion
	for n := at.Next - skip; ; {
		release()
		read := func(i int) error {
			rows := int64(parquetBatch)
			if skip > 0 {
				rows = min(skip, rows)
			}
			chunks, err := readers[i].NextBatch(rows)
			if err != nil {
				return err
			}
			defer chunks.Release()
			switch cs := chunks.Chunks(); len(cs) {
			case 0:
				cols[i] = array.MakeArrayOfNull(mem, chunks.DataType(), 0)
			case 1:
				cols[i] = cs[0]
				cols[i].Retain()
			default: // the batch spans row groups
				cols[i], err = array.Concatenate(cs, mem)
			}
			return err
		}
		err := safely(func() error {
			for i := range readers {
				if err := read(i); err != nil {
					return err
				}
				if cols[i].Len() != cols[0].Len() {
					return fmt.Errorf("damaged Parquet file: a batch of %d rows in column %q, %d in %q", cols[i].Len(), names[want[i]], cols[0].Len(), names[want[0]])
				}
			}
			return nil
		})
		switch {
		case err != nil:
			return err
		case cols[0].Len() == 0:
			return nil
		case skip > 0: // rows before the mark, in its row group
			skip -= int64(cols[0].Len())
			n += int64(cols[0].Len())
			continue
		}
		var rows []row
		if err := safely(func() error { // a damaged dictionary's index, say
			for i := range cols[0].Len() {
				n++
				r := row{where: fmt.Sprintf("row %d", n)}
				uri, ok := valueAt(cols[0], i)
				if !ok {
					return fmt.Errorf("row %d: null uri", n)
				}
				r.uri = uri
				r.label, _ = valueAt(cols[1], i)
				if domain >= 0 {
					r.domain, _ = valueAt(cols[domain], i)
				}
				if version >= 0 {
					r.version, _ = valueAt(cols[version], i)
				}
				for c, v := range []string{r.uri, r.label, r.domain, r.version} {
					if len(v) > maxValue {
						return fmt.Errorf("row %d: its %s is %d bytes; a manifest's values are at most %d (is the column the images' bytes?)",
							n, []string{"uri", "label", "domain", "version"}[c], len(v), maxValue)
					}
				}
				rows = append(rows, r)
			}
			return nil
		}); err != nil {
			return err
		}
		for _, r := range rows {
			if err := emit(r); err != nil {
				return err
			}
		}
	}
}

// maxValue caps a manifest's uri, label, domain and version, as a
// WebDataset's labels are capped: anything larger is no name but a
// misnamed column, or a file made to fill a worker's memory.
const maxValue = 64 << 10

// dictionaryOnly says whether column c's chunks in groups have every data
// page dictionary-encoded, as their metadata's page encoding stats say
// (no stats: not known to be).
func dictionaryOnly(pf *file.Reader, c int, groups []int) bool {
	ok := true
	safely(func() error {
		for _, g := range groups {
			cc, err := pf.MetaData().RowGroup(g).ColumnChunk(c)
			if err != nil || !cc.HasDictionaryPage() || len(cc.EncodingStats()) == 0 {
				ok = false
				return nil
			}
			for _, st := range cc.EncodingStats() {
				// Parquet's PageType DICTIONARY_PAGE (Arrow's enum of it
				// is internal to its module): the others are data pages.
				const dictionaryPage = 2
				if st.PageType != dictionaryPage && st.Encoding != parquet.Encodings.RLEDict && st.Encoding != parquet.Encodings.PlainDict {
					ok = false
					return nil
				}
			}
		}
		return nil
	})
	return ok
}

// checkSizes refuses, from the file's metadata, before reading a row, a
// wanted column whose row groups hold more than maxValue bytes a row on
// average, uncompressed: read, a batch of them would be that much memory
// a row, however small the file (a compression codec turns a repeated
// value into a few bytes).
func checkSizes(pf *file.Reader, want []int, names []string, groups []int) error {
	return safely(func() error {
		for _, g := range groups {
			rg := pf.MetaData().RowGroup(g)
			for _, c := range want {
				cc, err := rg.ColumnChunk(c)
				if err != nil {
					return err
				}
				if size, n := cc.TotalUncompressedSize(), max(cc.NumValues(), 1); size/n > maxValue {
					return fmt.Errorf("column %q: row group %d holds %d bytes uncompressed for %d rows; a manifest's values are at most %d bytes (is the column the images' bytes?)",
						names[c], g, size, cc.NumValues(), maxValue)
				}
			}
		}
		return nil
	})
}

// safely runs read, a call into the Parquet reader, making its panics
// errors: it trusts a file's metadata (row counts, offsets), and a
// damaged manifest panicking would have the planning activity retried on
// it again and again rather than fail naming it.
func safely(read func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if e, ok := r.(overBudget); ok {
				err = e
				return
			}
			err = fmt.Errorf("damaged Parquet file: %v", r)
		}
	}()
	return read()
}

// parquetMemory is the most a Parquet manifest's walk holds at once in
// Arrow buffers: a batch's values, its pages, its columns' dictionaries.
// A manifest of 8,192-row batches of 200-byte uris takes a few MB. A
// variable for the tests.
var parquetMemory = 256 << 20

// budgetAllocator fails an allocation past its budget with an overBudget
// panic, which safely, around every call into the reader, returns.
type budgetAllocator struct {
	memory.Allocator
	mu   sync.Mutex
	left int
}

type overBudget struct{ need int }

func (e overBudget) Error() string {
	return fmt.Sprintf("reading it takes more than %d MiB of memory at once (a buffer of %d bytes): its values are too many or too large for a manifest's (is a column the images' bytes?)", parquetMemory>>20, e.need)
}

func (a *budgetAllocator) take(n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if n > a.left {
		panic(overBudget{n})
	}
	a.left -= n
}

func (a *budgetAllocator) Allocate(n int) []byte {
	a.take(n)
	return a.Allocator.Allocate(n)
}

func (a *budgetAllocator) Reallocate(n int, b []byte) []byte {
	a.take(n - len(b))
	return a.Allocator.Reallocate(n, b)
}

func (a *budgetAllocator) Free(b []byte) {
	a.take(-len(b))
	a.Allocator.Free(b)
}

// stringLike reports whether a column of type t is read as text: strings,
// binary, integers (labels written as class indices) and dictionaries of
// those.
func stringLike(t arrow.DataType) bool {
	switch t.ID() {
	case arrow.STRING, arrow.LARGE_STRING, arrow.BINARY, arrow.LARGE_BINARY,
		arrow.INT8, arrow.INT16, arrow.INT32, arrow.INT64,
		arrow.UINT8, arrow.UINT16, arrow.UINT32, arrow.UINT64:
		return true
	case arrow.DICTIONARY:
		return stringLike(t.(*arrow.DictionaryType).ValueType)
	}
	return false
}

// valueAt is the text of row i of a stringLike column; false when null.
func valueAt(a arrow.Array, i int) (string, bool) {
	if a.IsNull(i) {
		return "", false
	}
	switch a := a.(type) {
	case *array.String:
		return a.Value(i), true
	case *array.LargeString:
		return a.Value(i), true
	case *array.Binary:
		return string(a.Value(i)), true
	case *array.LargeBinary:
		return string(a.Value(i)), true
	case *array.Dictionary:
		return valueAt(a.Dictionary(), a.GetValueIndex(i))
	}
	return strings.TrimSpace(a.ValueStr(i)), true
}

// parquetVersion identifies a manifest's content for a Mark.
func parquetVersion(attrs *blob.Attributes) string {
	return fmt.Sprintf("%d:%d:%s", attrs.Size, attrs.ModTime.UnixNano(), attrs.ETag)
}

// rangeReader reads an object by ranges: the io.ReaderAt and io.Seeker a
// Parquet reader wants, without downloading the whole object. Each range
// is checked against the object's size and, once set, modified (the time
// its first range read found, as range reads report it: GCS's attributes
// give a finer one): bytes of two versions read as one file could pair one
// row's uri with another's label.
type rangeReader struct {
	ctx      context.Context
	b        *blob.Bucket
	key      string
	size     int64
	modified time.Time
	pos      int64
}

func (r *rangeReader) ReadAt(p []byte, off int64) (int, error) {
	n, _, err := r.readAt(p, off)
	return n, err
}

// readAt is ReadAt, returning the modification time the read found.
func (r *rangeReader) readAt(p []byte, off int64) (int, time.Time, error) {
	if off >= r.size {
		return 0, time.Time{}, io.EOF
	}
	n := min(int64(len(p)), r.size-off)
	br, err := r.b.NewRangeReader(r.ctx, r.key, off, n, nil)
	if err != nil {
		return 0, time.Time{}, err
	}
	defer br.Close()
	if br.Size() != r.size || !r.modified.IsZero() && !br.ModTime().Equal(r.modified) {
		return 0, time.Time{}, fmt.Errorf("%q changed while being read, %d bytes modified %v, then %d modified %v: %w",
			r.key, r.size, r.modified, br.Size(), br.ModTime(), ErrChanged)
	}
	got, err := io.ReadFull(store.Body(br), p[:n])
	if err != nil {
		return got, time.Time{}, err
	}
	if n < int64(len(p)) {
		return got, br.ModTime(), io.EOF
	}
	return got, br.ModTime(), nil
}

func (r *rangeReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.pos
	case io.SeekEnd:
		offset += r.size
	default:
		return 0, fmt.Errorf("dataset: seek: bad whence %d", whence)
	}
	if offset < 0 {
		return 0, fmt.Errorf("dataset: seek to %d", offset)
	}
	r.pos = offset
	return offset, nil
}
