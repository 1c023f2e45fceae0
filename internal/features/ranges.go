package features

import (
	"context"
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
// each is a request, it reads in three rounds: the file's head
// (store.HeadBytes, which holds the metadata of a file of one batch, as
// EmbedShard writes them), its tail (the footer), then the URIs and the
// rows, several requests at once.
func LoadRowsAt(ctx context.Context, b *blob.Bucket, key string, columns []string, rows []int, mem memory.Allocator) ([]*Matrix, error) {
	if err := checkIndices(rows); err != nil {
		return nil, fmt.Errorf("features: %q: %w", key, err)
	}
	p := picker{byIndex: true, rows: rows}
	sf, err := store.OpenFile(ctx, b, key)
	if err != nil {
		return nil, err
	}
	defer sf.Close()
	size := int(sf.Size())
	f := newRanges(sf)
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
	fs := make([]arrow.Field, len(fields))
	for i, f := range fields {
		fs[i].Name = f.Name
		switch {
		case f.Type == ipcfile.TypeFixedSizeList && f.ListSize <= 0: // damaged: Arrow's reader decides
			return nil, nil
		case f.Type == ipcfile.TypeUtf8:
			fs[i].Type = arrow.BinaryTypes.String
		case f.Type == ipcfile.TypeFixedSizeList && f.Elem == ipcfile.TypeFloatingPoint && f.Precision == 1:
			fs[i].Type = arrow.FixedSizeListOf(int32(f.ListSize), arrow.PrimitiveTypes.Float32)
		case f.Type == ipcfile.TypeFixedSizeList && f.Elem == ipcfile.TypeFloatingPoint && f.Precision == 0:
			fs[i].Type = arrow.FixedSizeListOf(int32(f.ListSize), arrow.FixedWidthTypes.Float16)
		default:
			return nil, nil
		}
	}
	return arrow.NewSchema(fs, nil), nil
}
