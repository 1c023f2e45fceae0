package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/apache/arrow/go/v15/arrow"

	"dcd/internal/embed"
	"dcd/internal/store"
	"dcd/schemas"
)

// part is a run of a shard's images, the unit a retried EmbedShard resumes
// from.
type part struct {
	index   int
	start   int       // the shard's image it starts at
	began   time.Time // when its first batch was started
	images  int       // embedded and rejected
	recs    []arrow.Record
	dims    []int
	rejects []embed.Reject
}

func (p *part) release() {
	for _, r := range p.recs {
		r.Release()
	}
	p.recs = nil
}

// partWriter writes finished parts to storage on its own goroutine, one at
// a time and in order, so inference never waits on a write unless two
// parts are queued. It keeps the parts for commitShard.
type partWriter struct {
	a       *Activities
	ctx     context.Context
	columns []string
	key     string // the feature file's
	queue   chan *part
	done    chan struct{}
	failed  atomic.Pointer[error]

	mu     sync.Mutex
	parts  map[int]*part
	stored embedProgress // the parts in storage
	last   int           // one past the last part, stored or kept
}

func (a *Activities) newPartWriter(ctx context.Context, columns []string, key string, stored embedProgress) *partWriter {
	w := &partWriter{a: a, ctx: ctx, columns: columns, key: key,
		queue: make(chan *part, 1), done: make(chan struct{}), parts: map[int]*part{}, stored: stored, last: stored.NextPart}
	go w.loop()
	return w
}

func (w *partWriter) loop() {
	defer close(w.done)
	for p := range w.queue {
		w.add(p)
		if w.failed.Load() != nil {
			continue // drain, so put never blocks on a dead writer
		}
		if err := w.write(p); err != nil {
			w.failed.Store(&err)
			continue
		}
		w.mu.Lock()
		w.stored.NextPart = p.index + 1
		w.stored.Starts = append(w.stored.Starts, p.start+p.images)
		w.mu.Unlock()
	}
}

func (w *partWriter) add(p *part) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.parts[p.index] = p
	w.last = max(w.last, p.index+1)
}

// keep adds the shard's last part for commitShard, unwritten: the commit
// that follows writes it, and a retry would redo it either way.
func (w *partWriter) keep(p *part) { w.add(p) }

// count is the number of the shard's parts, stored or kept.
func (w *partWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// put queues a finished part, or returns the error an earlier write failed
// with.
func (w *partWriter) put(p *part) error {
	if err := w.failed.Load(); err != nil {
		p.release()
		return *err
	}
	w.queue <- p
	return nil
}

// progress is what a retry resumes from: the parts in storage.
func (w *partWriter) progress() embedProgress {
	w.mu.Lock()
	defer w.mu.Unlock()
	return embedProgress{NextPart: w.stored.NextPart, Starts: slices.Clone(w.stored.Starts)}
}

// close waits for the queued parts to be written and returns the first
// error.
func (w *partWriter) close() error {
	close(w.queue)
	<-w.done
	if err := w.failed.Load(); err != nil {
		return *err
	}
	return nil
}

// part returns part i when this attempt embedded it.
func (w *partWriter) part(i int) (*part, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	p, ok := w.parts[i]
	return p, ok
}

func (w *partWriter) release() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.parts {
		p.release()
	}
}

// write stores a part's rejects, then its features, if any image was
// embedded.
func (w *partWriter) write(p *part) error {
	rejects := p.rejects
	if rejects == nil {
		rejects = []embed.Reject{}
	}
	key := partKey(w.key, p.index)
	rj, _ := json.Marshal(rejects)
	if err := store.WriteAll(w.ctx, w.a.Bucket, rejectsKey(key), rj); err != nil {
		return err
	}
	if len(p.recs) == 0 {
		return nil // every image rejected: no part file
	}
	return store.WriteArrow(w.ctx, w.a.Bucket, key, schemas.Features(w.columns, p.dims), w.a.Mem, p.recs...)
}

// commitShard concatenates the parts into the feature file, writes the
// shard's rejects, and removes the parts. Parts this attempt embedded come
// from memory, earlier attempts' from storage. The rejects file is written
// last: it marks the cache entry complete.
func (a *Activities) commitShard(ctx context.Context, key string, nParts, total int, res EmbedShardResult, mem *partWriter) (EmbedShardResult, error) {
	var all []embed.Reject
	var w *store.ArrowWriter
	write := func(schema *arrow.Schema, rec arrow.Record) error {
		if w == nil {
			var err error
			if w, err = store.NewArrowWriter(ctx, a.Bucket, key, schema, a.Mem); err != nil {
				return err
			}
		}
		return w.Write(rec)
	}
	fail := func(err error) (EmbedShardResult, error) {
		if w != nil {
			w.Abort()
		}
		return res, err
	}
	for p := 0; p < nParts; p++ {
		if got, ok := mem.part(p); ok {
			all = append(all, got.rejects...)
			for _, rec := range got.recs {
				if err := write(rec.Schema(), rec); err != nil {
					return fail(err)
				}
			}
			continue
		}
		rejects, err := a.storedPart(ctx, partKey(key, p), write)
		if err != nil {
			return fail(err)
		}
		all = append(all, rejects...)
	}
	if w != nil {
		if err := w.Close(); err != nil {
			return res, err
		}
	}
	if all == nil {
		all = []embed.Reject{}
	}
	rj, _ := json.Marshal(all)
	if err := store.WriteAll(ctx, a.Bucket, rejectsKey(key), rj); err != nil {
		return res, err
	}
	var wg sync.WaitGroup
	for p := 0; p < nParts; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.Bucket.Delete(ctx, partKey(key, p))
			a.Bucket.Delete(ctx, rejectsKey(partKey(key, p)))
		}()
	}
	wg.Wait()
	res.Images, res.Rejects = total-len(all), len(all)
	return res, nil
}

// storedPart reads a part an earlier attempt wrote: it passes the part's
// records to write and returns its rejects.
func (a *Activities) storedPart(ctx context.Context, key string, write func(*arrow.Schema, arrow.Record) error) ([]embed.Reject, error) {
	rk := rejectsKey(key)
	data, err := store.ReadAll(ctx, a.Bucket, rk)
	if err != nil {
		return nil, store.Classify(err, rk)
	}
	var rejects []embed.Reject
	if err := json.Unmarshal(data, &rejects); err != nil {
		return nil, fmt.Errorf("activities: %s: %w", rk, err)
	}
	if ok, err := store.Exists(ctx, a.Bucket, key); err != nil || !ok {
		return rejects, err // no file: every image of the part was rejected
	}
	f, err := store.OpenArrow(ctx, a.Bucket, key, a.Mem)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	for i := 0; i < f.NumRecords(); i++ {
		rec, err := f.Record(i)
		if err != nil {
			return nil, err
		}
		if err := write(f.Schema(), rec); err != nil {
			return nil, err
		}
	}
	return rejects, nil
}
