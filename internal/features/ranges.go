package features

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/memory"
	"gocloud.dev/blob"
	"golang.org/x/sync/errgroup"

	"dcd/internal/ipcfile"
	"dcd/internal/store"
)

// LoadRowsAt is LoadColumns for some of a file's rows: rows are their
// indices, ascending. It reads the file's footer, its batches' metadata,
// and the URIs of the batches those rows are in and the rows' values: a
// few rows of a pool shard's file cost a few KiB read instead of its MiBs.
// From a file:// bucket each read is a pread. From an object store, where
// each is a request, it reads in two rounds when the file is one batch, as
// EmbedShard writes a pool shard's: the file's head (store.HeadBytes,
// which holds the batch's metadata), then its tail (the footer) with the
// rows and their URIs (guess), several requests at once; a third when the
// file is not so.
func LoadRowsAt(ctx context.Context, b *blob.Bucket, key string, columns []string, rows []int, mem memory.Allocator) ([]*Matrix, error) {
	if err := checkIndices(rows); err != nil {
		return nil, fmt.Errorf("features: %q: %w", key, err)
	}
	sf, err := store.OpenFile(ctx, b, key)
	if err != nil {
		return nil, err
	}
	defer sf.Close()
	return newRanges(sf).rowsAt(ctx, b, key, columns, rows, mem)
}

// rowsAt is LoadRowsAt of the file f reads.
func (f *ranges) rowsAt(ctx context.Context, b *blob.Bucket, key string, columns []string, rows []int, mem memory.Allocator) ([]*Matrix, error) {
	p := picker{byIndex: true, rows: rows}
	size := int(f.f.Size())
	if !f.f.Local() {
		f.guess(size, columns, rows)
	}
	schema, err := f.schema(size)
	if err != nil {
		return nil, fmt.Errorf("features: %q: %w", key, err)
	}
	if schema != nil {
		idx, dims, err := columnsOf(key, schema, columns)
		if err != nil {
			return nil, err
		}
		ms, ok, err := pickRows(f, size, schema, idx, dims, p)
		if ok {
			if err != nil {
				return nil, fmt.Errorf("features: %q: %w", key, err)
			}
			return ms, nil
		}
	}
	return loadRows(ctx, b, key, columns, mem, p) // not DCD's layout
}

// tailBytes is how much of a file's end LoadRowsAt reads first: its
// footer, and the last batches' metadata with it.
const tailBytes = 16 << 10

// span is a run of a file's bytes.
type span struct{ off, n int }

// file is a feature file's bytes as pickRows reads them: whole, or the
// spans fetched so far.
type file interface {
	// fetch makes spans readable.
	fetch(spans []span) error
	// at is the n bytes at off, fetched before.
	at(off, n int) []byte
}

// whole is a file read whole.
type whole []byte

func (w whole) fetch([]span) error   { return nil }
func (w whole) at(off, n int) []byte { return w[off : off+n] }

// ranges is a file read a run of spans at a time.
type ranges struct {
	f *store.File
	// gap is the most bytes between two spans read at once: about what
	// a pread costs in copying; for requests, which run several at once,
	// a few rows' worth, since many requests cost less time than one of
	// the whole file but each costs more than the bytes alone.
	gap int
	// parallel is how many reads run at once; with oneRound, a fetch
	// reads no more runs than that, joining the nearest, so that it costs
	// one round of requests however its spans lie.
	parallel int
	oneRound bool
	got      []fetched
	rounds   int // fetches that read anything
}

type fetched struct {
	off  int
	data []byte
}

func newRanges(f *store.File) *ranges {
	if f.Local() {
		return &ranges{f: f, gap: 4 << 10, parallel: 1}
	}
	return &ranges{f: f, gap: 32 << 10, parallel: 8, oneRound: true, got: []fetched{{0, f.Head()}}}
}

// fetch reads the spans, runs of them less than gap apart in one read, so
// that at finds any run of adjacent spans of one call in one piece. A run
// that bytes read before hold whole is not read again.
func (p *ranges) fetch(spans []span) error {
	spans = slices.Clone(spans)
	slices.SortFunc(spans, func(a, b span) int { return a.off - b.off })
	var todo []span
	for i := 0; i < len(spans); {
		lo, hi := spans[i].off, spans[i].off+spans[i].n
		for i++; i < len(spans) && spans[i].off <= hi+p.gap; i++ {
			hi = max(hi, spans[i].off+spans[i].n)
		}
		if _, ok := p.find(lo, hi-lo); !ok {
			todo = append(todo, span{lo, hi - lo})
		}
	}
	if p.oneRound && len(todo) > p.parallel {
		todo = join(todo, p.parallel)
	}
	if size := int(p.f.Size()); p.oneRound && covered(todo) > size/2 {
		// Most of the file: one request for all of it, which every later
		// round finds its spans in, costs fewer bytes than runs whose
		// spans a later round straddles and reads again.
		todo = []span{{0, size}}
	}
	if len(todo) > 0 {
		p.rounds++
	}
	runs := make([]fetched, len(todo))
	for i, t := range todo {
		runs[i] = fetched{t.off, make([]byte, t.n)}
	}
	var g errgroup.Group
	g.SetLimit(p.parallel)
	for _, r := range runs {
		g.Go(func() error {
			if _, err := p.f.ReadAt(r.data, int64(r.off)); err != nil {
				return fmt.Errorf("read %d bytes at %d: %w", len(r.data), r.off, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	p.got = append(p.got, runs...)
	return nil
}

// covered is the bytes runs span.
func covered(runs []span) int {
	n := 0
	for _, r := range runs {
		n += r.n
	}
	return n
}

// join joins runs, sorted and apart, into n across the n-1 widest gaps
// between them: the fewest bytes n reads can cover them in.
func join(runs []span, n int) []span {
	gaps := make([]int, len(runs)-1) // gap i is between runs i and i+1
	for i := range gaps {
		gaps[i] = i
	}
	slices.SortStableFunc(gaps, func(a, b int) int {
		return (runs[b+1].off - runs[b].off - runs[b].n) - (runs[a+1].off - runs[a].off - runs[a].n)
	})
	cuts := gaps[:n-1]
	slices.Sort(cuts)
	joined := make([]span, 0, n)
	lo := 0
	for _, c := range append(cuts, len(runs)-1) {
		end := runs[c].off + runs[c].n
		joined = append(joined, span{runs[lo].off, end - runs[lo].off})
		lo = c + 1
	}
	return joined
}

// find returns the n bytes at off, if they were fetched in one piece.
func (p *ranges) find(off, n int) ([]byte, bool) {
	for _, g := range p.got {
		if off >= g.off && off+n <= g.off+len(g.data) {
			return g.data[off-g.off : off-g.off+n], true
		}
	}
	return nil, false
}

func (p *ranges) at(off, n int) []byte {
	if b, ok := p.find(off, n); ok {
		return b
	}
	panic(notFetched{off, n})
}

// notFetched is the panic of an at before its fetch: a bug, which pickRows
// lets through rather than report the file damaged.
type notFetched span

func (e notFetched) Error() string {
	return fmt.Sprintf("features: bytes %d to %d read before they were fetched", e.off, e.off+e.n)
}

// schema reads the file's footer, and its schema when the file is DCD's
// layout (nil when not).
func (p *ranges) schema(size int) (*arrow.Schema, error) {
	if err := p.fetch([]span{{size - min(size, tailBytes), min(size, tailBytes)}}); err != nil {
		return nil, err
	}
	n, err := ipcfile.FooterLen(p.at(size-min(size, 10), min(size, 10)), size)
	if err != nil {
		return nil, err
	}
	if err := p.fetch([]span{{size - 10 - n, n}}); err != nil {
		return nil, err
	}
	var fields []ipcfile.Field
	err = ipcfile.Safely(func() (err error) {
		fields, err = ipcfile.Fields(ipcfile.Root(p.at(size-10-n, n)))
		return err
	})
	if err != nil {
		return nil, err
	}
	return arrowSchema(fields), nil
}

// arrowSchema is the schema of fields, when they are DCD's layout (nil
// when not).
func arrowSchema(fields []ipcfile.Field) *arrow.Schema {
	fs := make([]arrow.Field, len(fields))
	for i, f := range fields {
		fs[i].Name = f.Name
		switch {
		case f.Type == ipcfile.TypeFixedSizeList && f.ListSize <= 0: // damaged: Arrow's reader decides
			return nil
		case f.Type == ipcfile.TypeUtf8:
			fs[i].Type = arrow.BinaryTypes.String
		case f.Type == ipcfile.TypeFixedSizeList && f.Elem == ipcfile.TypeFloatingPoint && f.Precision == 1:
			fs[i].Type = arrow.FixedSizeListOf(int32(f.ListSize), arrow.PrimitiveTypes.Float32)
		case f.Type == ipcfile.TypeFixedSizeList && f.Elem == ipcfile.TypeFloatingPoint && f.Precision == 0:
			fs[i].Type = arrow.FixedSizeListOf(int32(f.ListSize), arrow.FixedWidthTypes.Float16)
		default:
			return nil
		}
	}
	return arrow.NewSchema(fs, nil)
}

// guess fetches the file's tail and, on the guess that the file is one
// batch, the spans of rows in it, read from the head the first request
// brought: the schema message, then the first batch's. Then a file of one
// batch costs a round of requests less. A wrong guess costs bytes, never
// results: pickRows reads the footer, and fetches what it finds missing.
// It fetches nothing when the head is not what it expects (the fetch's
// own error is the footer's read's to report).
func (p *ranges) guess(size int, columns []string, rows []int) {
	head := p.f.Head()
	if len(rows) == 0 || len(head) < 16 || string(head[:6]) != "ARROW1" {
		return
	}
	var spans []span
	err := ipcfile.Safely(func() error {
		at := 8 // the first message, after the magic and its padding
		message := func() (byte, ipcfile.Table, bool) {
			if at+8 > len(head) || binary.LittleEndian.Uint32(head[at:]) != 0xFFFFFFFF {
				return 0, ipcfile.Table{}, false
			}
			n := int(int32(binary.LittleEndian.Uint32(head[at+4:])))
			if n <= 0 || n > len(head)-at-8 {
				return 0, ipcfile.Table{}, false
			}
			kind, header := ipcfile.Header(head[at : at+8+n])
			at += 8 + n
			return kind, header, true
		}
		kind, header, ok := message()
		if !ok || kind != ipcfile.SchemaMessage {
			return errNoGuess
		}
		fields, err := ipcfile.FieldsOf(header)
		if err != nil {
			return err
		}
		schema := arrowSchema(fields)
		if schema == nil {
			return errNoGuess
		}
		idx, dims, err := columnsOf("", schema, columns)
		if err != nil {
			return err
		}
		l, ok := newLayout(schema, idx, dims)
		if !ok {
			return errNoGuess
		}
		kind, rb, ok := message()
		if !ok || kind != ipcfile.RecordBatchMessage {
			return errNoGuess
		}
		bt := batch{meta: rb, body: at, bodyN: size - at, rows: int(rb.I64(ipcfile.BatchLength))}
		if rows[len(rows)-1] >= bt.rows {
			return errNoGuess // rows in later batches
		}
		spans = bt.rowSpans(l, rows)
		return nil
	})
	if err != nil {
		return
	}
	for _, s := range spans {
		if s.off < 0 || s.n < 0 || s.n > size-s.off {
			return
		}
	}
	p.fetch(append(spans, span{size - min(size, tailBytes), min(size, tailBytes)}))
}

// errNoGuess is guess's reason to fetch nothing.
var errNoGuess = errors.New("not a file of one batch")
