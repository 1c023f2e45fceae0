package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/apache/arrow/go/v15/arrow"

	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/store"
)

// shardWriter writes a shard's feature file on its own goroutine while the
// shard is embedded: each batch becomes a record, appended to the file as
// it comes, so that when the last batch is in, committing the shard costs
// little more than closing the file. It also writes the parts: checkpoints
// of the records so far, which a retried attempt copies into its own file
// instead of embedding them again.
type shardWriter struct {
	a      *Activities
	ctx    context.Context
	spec   features.Spec
	key    string // the feature file's
	queue  chan shardEvent
	done   chan struct{}
	failed atomic.Pointer[error]

	// Owned by the goroutine until done is closed.
	file    *store.ArrowWriter // opened with the first record
	rejects []embed.Reject     // the shard's, in order
	cur     part

	mu     sync.Mutex
	stored embedProgress // the parts in storage
}

// shardEvent is a batch, or the end of the part in progress.
type shardEvent struct {
	batch embed.Batch
	cut   bool
}

// part is the records and rejects of a run of the shard's images since the
// last checkpoint.
type part struct {
	index   int
	start   int // the shard's image it starts at
	images  int // embedded and rejected
	recs    []arrow.Record
	rejects []embed.Reject
}

func (p *part) release() {
	for _, r := range p.recs {
		r.Release()
	}
	p.recs = nil
}

// newShardWriter starts the writer of a shard whose parts before
// stored.NextPart an earlier attempt left in storage: it copies them into
// the feature file first.
func (a *Activities) newShardWriter(ctx context.Context, spec features.Spec, key string, stored embedProgress) *shardWriter {
	w := &shardWriter{a: a, ctx: ctx, spec: spec, key: key,
		queue: make(chan shardEvent, 16), done: make(chan struct{}), stored: stored,
		cur: part{index: stored.NextPart, start: stored.Starts[stored.NextPart]}}
	go w.loop()
	return w
}

func (w *shardWriter) loop() {
	defer close(w.done)
	fail := func(err error) { w.failed.CompareAndSwap(nil, &err) }
	for p := 0; p < w.stored.NextPart; p++ {
		rejects, err := w.a.storedPart(w.ctx, partKey(w.key, p), w.append)
		if err != nil {
			fail(err)
			break
		}
		w.rejects = append(w.rejects, rejects...)
	}
	for ev := range w.queue {
		if w.failed.Load() != nil {
			continue // drain, so send never blocks on a dead writer
		}
		if err := w.handle(ev); err != nil {
			fail(err)
		}
	}
	w.cur.release() // the last part needs no checkpoint: the commit follows
}

func (w *shardWriter) handle(ev shardEvent) error {
	if ev.cut {
		if err := w.checkpoint(&w.cur); err != nil {
			return err
		}
		w.mu.Lock()
		w.stored.NextPart = w.cur.index + 1
		w.stored.Starts = append(w.stored.Starts, w.cur.start+w.cur.images)
		w.mu.Unlock()
		w.cur.release()
		w.cur = part{index: w.cur.index + 1, start: w.cur.start + w.cur.images}
		return nil
	}
	b := ev.batch
	w.cur.images += len(b.Images) + len(b.Rejects)
	w.cur.rejects = append(w.cur.rejects, b.Rejects...)
	w.rejects = append(w.rejects, b.Rejects...)
	if len(b.Images) == 0 {
		return nil
	}
	rec := features.Record(w.a.Mem, w.spec.Columns, b, w.spec.StoredAs)
	w.cur.recs = append(w.cur.recs, rec)
	return w.append(rec)
}

// append adds a record to the feature file, opening it with the first.
func (w *shardWriter) append(rec arrow.Record) error {
	if w.file == nil {
		f, err := store.NewArrowWriter(w.ctx, w.a.Bucket, w.key, rec.Schema(), w.a.Mem)
		if err != nil {
			return err
		}
		w.file = f
	}
	return w.file.Write(rec)
}

// checkpoint stores a part's rejects, then its records, if any image was
// embedded.
func (w *shardWriter) checkpoint(p *part) error {
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
	return store.WriteArrow(w.ctx, w.a.Bucket, key, p.recs[0].Schema(), w.a.Mem, p.recs...)
}

// add queues an embedded batch; cut ends the part in progress. Both return
// the error the writer failed with, if it did.
func (w *shardWriter) add(b embed.Batch) error { return w.send(shardEvent{batch: b}) }
func (w *shardWriter) cut() error              { return w.send(shardEvent{cut: true}) }

func (w *shardWriter) send(ev shardEvent) error {
	if err := w.failed.Load(); err != nil {
		return *err
	}
	w.queue <- ev
	return nil
}

// progress is what a retry resumes from: the parts in storage.
func (w *shardWriter) progress() embedProgress {
	w.mu.Lock()
	defer w.mu.Unlock()
	return embedProgress{NextPart: w.stored.NextPart, Starts: slices.Clone(w.stored.Starts)}
}

// stop stops the writer once the queued events are handled and returns
// the error it failed with.
func (w *shardWriter) stop() error {
	close(w.queue)
	<-w.done
	if err := w.failed.Load(); err != nil {
		return *err
	}
	return nil
}

// discard drops the unfinished feature file; the parts in storage stay for
// a retry.
func (w *shardWriter) discard() {
	if w.file != nil {
		w.file.Abort()
	}
}

// abort stops the writer and discards the feature file.
func (w *shardWriter) abort() {
	w.stop()
	w.discard()
}

// commit completes the cache entry of a shard of total images whose
// batches have all been added: it closes the feature file, writes the
// shard's rejects, which mark the entry complete, and removes the parts.
func (w *shardWriter) commit(total int, res EmbedShardResult) (EmbedShardResult, error) {
	if err := w.stop(); err != nil {
		w.discard()
		return res, err
	}
	if w.file != nil {
		if err := w.file.Close(); err != nil {
			return res, err
		}
	}
	all := w.rejects
	if all == nil {
		all = []embed.Reject{}
	}
	rj, _ := json.Marshal(all)
	if err := store.WriteAll(w.ctx, w.a.Bucket, rejectsKey(w.key), rj); err != nil {
		return res, err
	}
	parts := w.progress().NextPart
	var wg sync.WaitGroup
	for p := 0; p < parts; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.a.Bucket.Delete(w.ctx, partKey(w.key, p))
			w.a.Bucket.Delete(w.ctx, rejectsKey(partKey(w.key, p)))
		}()
	}
	wg.Wait()
	res.Images, res.Rejects = total-len(all), len(all)
	return res, nil
}

// storedPart reads a part an earlier attempt wrote: it passes the part's
// records to write and returns its rejects.
func (a *Activities) storedPart(ctx context.Context, key string, write func(arrow.Record) error) ([]embed.Reject, error) {
	rejects, err := a.readRejects(ctx, rejectsKey(key))
	if err != nil {
		return nil, err
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
		if err := write(rec); err != nil {
			return nil, err
		}
	}
	return rejects, nil
}

// readRejects reads a rejects file (rejectsKey).
func (a *Activities) readRejects(ctx context.Context, key string) ([]embed.Reject, error) {
	data, err := store.ReadAll(ctx, a.Bucket, key)
	if err != nil {
		return nil, store.Classify(err, key)
	}
	var rejects []embed.Reject
	if err := json.Unmarshal(data, &rejects); err != nil {
		return nil, fmt.Errorf("activities: %s: %w", key, err)
	}
	return rejects, nil
}
