package activities

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"

	"dcd/internal/dataset"
	"dcd/internal/features"
	"dcd/internal/head"
	"dcd/internal/store"
)

// featureSource is one feature file's part of a training set.
type featureSource struct {
	key    string  // feature file
	labels []int32 // class of each row of the file; -1 leaves the row out
	weight float32
}

// featureRows is head.Rows (and head.Shuffled) over feature files in
// storage. When all rows fit the memory budget they are read once and kept;
// otherwise every pass re-reads the files, one at a time with the next one
// loading behind it, so at most two files' rows are in memory whatever the
// size of the training set.
type featureRows struct {
	ctx     context.Context
	a       *Activities
	column  string
	dim     int
	sources []featureSource
	cached  [][]float32 // per source; nil when streaming
	mix     head.Mixer  // EachShuffled's, its window kept from epoch to epoch
	// live counts files held in memory now; maxLive is the most at once.
	live, maxLive atomic.Int32
	passes        int
	// moved, when set, is told of each file given (beatingWhileMoving).
	moved func()
}

var _ head.Shuffled = (*featureRows)(nil)

func (r *featureRows) Dim() int { return r.dim }

// Each implements head.Rows.
func (r *featureRows) Each(fn func(x []float32, label int, weight float32) error) error {
	return r.each(nil, fn)
}

// EachShuffled implements head.Shuffled: the files in a seeded order,
// each file's rows in a seeded order, mixed over a window of rows
// (head.Mixer) so that a set of few files does not come in runs of its
// own; the same whether the rows are kept in memory or streamed.
func (r *featureRows) EachShuffled(seed uint64, fn func(x []float32, label int, weight float32) error) error {
	rng := rand.New(rand.NewPCG(seed, 0xfea7))
	r.mix.Reset(rng, r.dim, fn)
	if err := r.each(rng, r.mix.Add); err != nil {
		return err
	}
	return r.mix.Flush()
}

func (r *featureRows) each(rng *rand.Rand, fn func(x []float32, label int, weight float32) error) error {
	r.passes++
	order := make([]int, len(r.sources))
	for i := range order {
		order[i] = i
	}
	if rng != nil {
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	}
	if r.cached != nil {
		for _, s := range order {
			if err := r.emit(s, r.cached[s], rng, fn); err != nil {
				return err
			}
			// A fit in memory takes as long as one streamed, or longer
			// (the rows fit because memory_mb is large): it heartbeats
			// alike, and stops when the pass is cancelled.
			r.given()
			if err := r.ctx.Err(); err != nil {
				return err
			}
		}
		return nil
	}
	// Stream: a goroutine loads the next file while fn consumes this one.
	type loaded struct {
		s    int
		data []float32
		err  error
	}
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	ch := make(chan loaded)
	go func() {
		defer close(ch)
		for _, s := range order {
			data, err := r.load(ctx, s)
			select {
			case ch <- loaded{s, data, err}:
			case <-ctx.Done():
				if data != nil {
					r.live.Add(-1)
				}
				return
			}
			if err != nil {
				return
			}
		}
	}()
	for l := range ch {
		if l.err != nil {
			return l.err
		}
		err := r.emit(l.s, l.data, rng, fn)
		r.live.Add(-1)
		if err != nil {
			return err
		}
		r.given()
	}
	return r.ctx.Err()
}

// given beats after a file given to the fit, and tells moved of it.
func (r *featureRows) given() {
	heartbeat(r.ctx, fmt.Sprintf("pass %d", r.passes))
	if r.moved != nil {
		r.moved()
	}
}

func (r *featureRows) emit(s int, data []float32, rng *rand.Rand, fn func(x []float32, label int, weight float32) error) error {
	src := r.sources[s]
	rows := len(src.labels)
	if rng == nil {
		for i, l := range src.labels {
			if l >= 0 {
				if err := fn(data[i*r.dim:(i+1)*r.dim], int(l), src.weight); err != nil {
					return err
				}
			}
		}
		return nil
	}
	for _, i := range rng.Perm(rows) {
		if l := src.labels[i]; l >= 0 {
			if err := fn(data[i*r.dim:(i+1)*r.dim], int(l), src.weight); err != nil {
				return err
			}
		}
	}
	return nil
}

// A readError is a feature file that could not be read again while
// training streamed it: a store's hiccup, which a retry of the activity
// gets past, unlike the head's own errors.
type readError struct{ err error }

func (e *readError) Error() string { return e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// load reads one source's features; the caller must r.live.Add(-1) when
// done with them.
func (r *featureRows) load(ctx context.Context, s int) ([]float32, error) {
	src := r.sources[s]
	m, err := features.Load(ctx, r.a.Bucket, src.key, r.column, r.a.Mem)
	if err != nil {
		return nil, &readError{store.Classify(fmt.Errorf("activities: retrain: %w", err), src.key)}
	}
	if len(m.URIs) != len(src.labels) || m.Dim != r.dim {
		return nil, &readError{fmt.Errorf("activities: retrain: feature file %s changed during training: %d rows of %d values, had %d of %d", src.key, len(m.URIs), m.Dim, len(src.labels), r.dim)}
	}
	n := r.live.Add(1)
	for {
		old := r.maxLive.Load()
		if n <= old || r.maxLive.CompareAndSwap(old, n) {
			break
		}
	}
	return m.Data, nil
}

// rowSet names a dataset's shards as training rows.
type rowSet struct {
	ds     string
	shards int
	weight float32
	// strict makes a label outside classes an error; otherwise the image
	// is left out and counted.
	strict bool
	// keep, when not nil, limits the rows to those it counts, by item
	// key and label (manifestRows): an image listed twice that the
	// guards kept once is taken once.
	keep map[string]int
}

// rowStats counts what newFeatureRows found.
type rowStats struct {
	rows    []int // per rowSet
	skipped int   // labels outside classes
	// skippedLabels are the first few of those labels, to name.
	skippedLabels []string
	// Per rowSet: kept rows whose domain is errorDomain, and whether some
	// kept row has a domain at all; domains are the first few domains of
	// its kept rows, to name when none is errorDomain.
	domain  []int
	known   []bool
	domains [][]string
	// perClass counts the kept rows of every set by class.
	perClass []int
}

// newFeatureRows indexes the rows of sets (one read of each feature file,
// to join labels), keeping them in memory when they fit in budget bytes.
func (a *Activities) newFeatureRows(ctx context.Context, run string, m ModelRef, classes []string, sets []rowSet, budget int64, errorDomain string) (*featureRows, rowStats, error) {
	r := &featureRows{ctx: ctx, a: a, column: "features"}
	index := dataset.NewClasses(classes)
	st := rowStats{rows: make([]int, len(sets)), domain: make([]int, len(sets)), known: make([]bool, len(sets)), domains: make([][]string, len(sets)),
		perClass: make([]int, len(classes))}
	var cache [][]float32
	var bytes int64
	caching := true
	read := make([]shardSet, len(sets))
	for si, set := range sets {
		read[si] = shardSet{set.ds, set.shards}
	}
	err := a.eachShardOf(ctx, run, read, m, r.column, func(si, i int, loaded loadedShard) error {
		set := sets[si]
		shardKey := ShardKey(run, set.ds, i)
		key, items, mat := loaded.key, loaded.items, loaded.mat
		if len(items) == 0 {
			return nil
		}
		if r.dim == 0 {
			r.dim = mat.Dim
		} else if mat.Dim != r.dim {
			return invalid("target model gives %d values per image for %s but %d for earlier shards", mat.Dim, shardKey, r.dim)
		}
		src := featureSource{key: key, labels: make([]int32, len(items)), weight: set.weight}
		for j, it := range items {
			c := index.Index(it.Label)
			switch {
			case set.keep != nil && set.keep[keptRow(it.Key, it.Label)] == 0:
				c = -1
			case c < 0 && set.strict:
				return offClass(set.ds, it, index)
			case c < 0:
				st.skipped++
				if len(st.skippedLabels) < MaxSkippedExamples && !slices.Contains(st.skippedLabels, it.Label) {
					st.skippedLabels = append(st.skippedLabels, it.Label)
				}
			default:
				if set.keep != nil {
					set.keep[keptRow(it.Key, it.Label)]--
				}
				st.rows[si]++
				st.perClass[c]++
				if it.Domain != "" {
					st.known[si] = true
					if len(st.domains[si]) < 5 && !slices.Contains(st.domains[si], it.Domain) {
						st.domains[si] = append(st.domains[si], it.Domain)
					}
				}
				if errorDomain != "" && it.Domain == errorDomain {
					st.domain[si]++
				}
			}
			src.labels[j] = int32(c)
		}
		r.sources = append(r.sources, src)
		bytes += int64(len(mat.Data)) * 4
		if caching && bytes <= budget {
			cache = append(cache, mat.Data)
		} else {
			caching, cache = false, nil
		}
		heartbeat(ctx, shardKey)
		return nil
	})
	if err != nil {
		return nil, st, err
	}
	if caching {
		r.cached = cache
	}
	return r, st, nil
}
