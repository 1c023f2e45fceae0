package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/redact"
	"dcd/internal/store"
)

// shardWriter writes a shard's feature file on its own goroutine while the
// shard is embedded: each batch becomes a record, and records are appended
// to the file as they come, several as one (recordBytes), so that when the
// last batch is in, committing the shard costs little more than closing
// the file. It also writes the parts: checkpoints of the records so far,
// which a retried attempt copies into its own file instead of embedding
// them again.
type shardWriter struct {
	a      *Activities
	ctx    context.Context
	spec   features.Spec
	shard  string // the manifest's key
	key    string // the feature file's
	queue  chan shardEvent
	closed sync.Once // the queue's close (stop)
	done   chan struct{}
	failed atomic.Pointer[error]
	// resumedFrom is the first image embedded, after the parts copied.
	resumedFrom int

	// Owned by the goroutine until done is closed.
	file         *store.ArrowWriter // opened with the first record
	rows         int                // in file, and pending
	pending      []arrow.Record     // appended, not yet written (recordBytes)
	pendingBytes int
	rejects      []embed.Reject // the shard's, in order
	cur          part

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

// newShardWriter starts the writer of a shard of items whose parts before
// stored.NextPart an earlier attempt left in storage: it copies them into
// the feature file first, each once it is checked to hold exactly its run
// of the items. Part keys are the cache entry's, so a part may be another
// attempt's that cut its parts elsewhere (its heartbeat lagged behind its
// writes), or gone (another attempt committed the entry and removed its
// parts), or damaged (a cut file, bad JSON). Then the shard goes on from
// that part, after the good ones before it, and progress says so (from
// its start if the feature file failed to take a part). Only a read that
// may pass when tried again fails: any other error, tried again, would
// meet the same part.
func (a *Activities) newShardWriter(ctx context.Context, spec features.Spec, shard, key string, items []dataset.Item, stored embedProgress) (*shardWriter, error) {
	w := &shardWriter{a: a, ctx: ctx, spec: spec, shard: shard, key: key,
		queue: make(chan shardEvent, 16), done: make(chan struct{}), stored: stored}
	for p := 0; p < stored.NextPart; p++ {
		lo, hi := stored.Starts[p], stored.Starts[p+1]
		err := fmt.Errorf("%w: part %d is images %d to %d of %d", errStalePart, p, lo, hi, len(items))
		if lo <= hi && hi <= len(items) {
			err = w.copyPart(p, lo, items[lo:hi])
		}
		if err == nil {
			// Copying many parts from an object store may outlast the
			// heartbeat timeout; what a retry resumes from is unchanged.
			heartbeat(ctx, stored)
			continue
		}
		if ctx.Err() != nil || store.Transient(err) {
			w.discard()
			return nil, err
		}
		if p == 0 || errors.Is(err, errAppend) { // nothing before it, or the feature file holds a part of it: all over
			activity.GetLogger(ctx).Warn("embedding the shard from its start", "key", key, "part", p, "error", err)
			w.discard()
			w.file, w.rows, w.rejects = nil, 0, nil
			w.stored = embedProgress{Starts: []int{0}}
			break
		}
		activity.GetLogger(ctx).Warn("embedding the shard from a part the attempt before wrote", "key", key, "part", p, "image", lo, "error", err)
		w.stored = embedProgress{NextPart: p, Starts: slices.Clone(stored.Starts[:p+1])}
		break
	}
	w.cur = part{index: w.stored.NextPart, start: w.stored.Starts[w.stored.NextPart]}
	w.resumedFrom = w.cur.start
	go w.loop()
	return w, nil
}

// errStalePart marks a part that does not hold the images it should.
var errStalePart = errors.New("stale part")

// copyPart appends part p, which must hold items, the shard's from lo on
// (embedded or rejected, in their order), to the feature file.
func (w *shardWriter) copyPart(p, lo int, items []dataset.Item) error {
	key := partKey(w.key, p)
	rejects, err := w.a.readRejects(w.ctx, rejectsKey(key))
	if err != nil {
		return err
	}
	var recs []arrow.Record
	defer func() {
		for _, r := range recs {
			r.Release()
		}
	}()
	var uris []string
	if len(rejects) < len(items) { // else every image was rejected: no part file
		f, err := store.OpenArrow(w.ctx, w.a.Bucket, key, w.a.Mem)
		if err != nil {
			return err
		}
		defer f.Close()
		for i := 0; i < f.NumRecords(); i++ {
			rec, err := f.Record(i)
			if err != nil {
				return fmt.Errorf("%w: %s: %w", errStalePart, key, err)
			}
			col, ok := rec.Column(0).(*array.String)
			if !ok {
				return fmt.Errorf("%w: %s: column 0 is %s, want the images' URIs", errStalePart, key, rec.Column(0).DataType())
			}
			for j := 0; j < col.Len(); j++ {
				uris = append(uris, col.Value(j))
			}
			rec.Retain()
			recs = append(recs, rec)
		}
	}
	// Rows and rejects, both in the shard's order, must be the items.
	r, j := 0, 0
	for _, it := range items {
		switch {
		case r < len(uris) && uris[r] == it.Key:
			r++
		case j < len(rejects) && rejects[j].URI == it.Key:
			j++
		default:
			return fmt.Errorf("%w: %s does not hold the shard's images %d to %d (%q is missing)", errStalePart, key, lo, lo+len(items)-1, it.Key)
		}
	}
	if r != len(uris) || j != len(rejects) {
		return fmt.Errorf("%w: %s holds more than the shard's images %d to %d", errStalePart, key, lo, lo+len(items)-1)
	}
	for _, rec := range recs {
		if err := w.append(rec); err != nil {
			return fmt.Errorf("%w: %w", errAppend, err)
		}
	}
	w.rejects = append(w.rejects, rejects...)
	return nil
}

// errAppend marks a part checked but not taken whole by the feature file.
var errAppend = errors.New("feature file")

func (w *shardWriter) loop() {
	defer close(w.done)
	fail := func(err error) { w.failed.CompareAndSwap(nil, &err) }
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

// recordBytes is about how many bytes of a feature file one of its
// records holds. Batches come a model batch at a time (16 or 64 images);
// a reader of a few rows (features.LoadRowsAt) reads the metadata of
// every record, a request each from an object store, so a pool shard's
// file is a record or a few, the first one's metadata in the head of the
// file that such a reader reads first.
const recordBytes = 8 << 20

// append adds a record to the feature file, opening it with the first:
// it is written once records of recordBytes are pending, or at the end.
func (w *shardWriter) append(rec arrow.Record) error {
	rec.Retain()
	w.pending = append(w.pending, rec)
	w.rows += int(rec.NumRows())
	w.pendingBytes += features.RecordBytes(rec)
	if w.pendingBytes < recordBytes {
		return nil
	}
	return w.flush()
}

// flush writes the pending records to the feature file as one.
func (w *shardWriter) flush() error {
	if len(w.pending) == 0 {
		return nil
	}
	rec, err := features.Concat(w.a.Mem, w.pending...)
	w.release()
	if err != nil {
		return err
	}
	defer rec.Release()
	if w.file == nil {
		f, err := store.NewArrowWriter(w.ctx, w.a.Bucket, w.key, rec.Schema(), w.a.Mem)
		if err != nil {
			return err
		}
		w.file = f
	}
	return w.file.Write(rec)
}

// release drops the pending records.
func (w *shardWriter) release() {
	for _, r := range w.pending {
		r.Release()
	}
	w.pending, w.pendingBytes = nil, 0
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
	if len(p.recs) == 0 { // every image rejected: no part file
		if err := w.a.Bucket.Delete(w.ctx, key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			return err // another attempt's file would be taken for this part's
		}
		return nil
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
// the error it failed with; a second call waits as the first did.
func (w *shardWriter) stop() error {
	w.closed.Do(func() { close(w.queue) })
	<-w.done
	if err := w.failed.Load(); err != nil {
		return *err
	}
	return nil
}

// discard drops the unfinished feature file; the parts in storage stay for
// a retry.
func (w *shardWriter) discard() {
	w.release()
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
	if w.rows+len(w.rejects) != total {
		w.discard()
		return res, fmt.Errorf("activities: shard %s (%s): %d rows and %d rejects for a shard of %d images", w.shard, w.key, w.rows, len(w.rejects), total)
	}
	if w.rows == 0 && total > 0 && !slices.ContainsFunc(w.rejects, func(r embed.Reject) bool { return !r.Unread() }) {
		// Not one image of the shard could be read: the workers' access
		// to them (credentials, a bucket's name) is wrong, not the
		// images. Cached, the shard would stay empty once that is fixed.
		w.discard()
		first := w.rejects[0].URI
		hint := ""
		if strings.Contains(first, `\`) {
			hint = ` (its key holds '\': a Windows path? A manifest's uri separates folders with '/')`
		}
		return res, temporal.NewNonRetryableApplicationError(fmt.Sprintf(
			"none of the %d images of shard %s could be read (the first, %s: %s)%s: check that the workers can read them, then run the pass with `starter run -reread` (shards already cached keep the images they could not read as rejects otherwise)",
			total, w.shard, redact.URL(first), redact.Text(w.rejects[0].Reason), hint), "ShardUnreadable", nil)
	}
	if err := w.flush(); err != nil {
		w.discard()
		return res, err
	}
	if w.file != nil {
		if err := w.file.Close(); err != nil {
			return res, err
		}
	} else if err := w.a.Bucket.Delete(w.ctx, w.key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		// Every image rejected: no feature file, and none of an earlier
		// write may stay (a dropped entry's), which a search would read.
		return res, err
	}
	all := w.rejects
	if all == nil {
		all = []embed.Reject{}
	}
	rj, _ := json.Marshal(all)
	if err := store.WriteAll(w.ctx, w.a.Bucket, rejectsKey(w.key), rj); err != nil {
		return res, err
	}
	w.removeParts()
	res.Images, res.Rejects = total-len(all), len(all)
	return res, nil
}

// removeParts removes the parts of the entry, which is complete: those this
// attempt copied or wrote and, after an attempt that failed, any that attempt
// wrote past its last heartbeat. A part that stays behind is only wasted
// space; a later resume checks a part before it takes it.
func (w *shardWriter) removeParts() {
	retried := activity.GetInfo(w.ctx).Attempt > 1
	if !retried && w.progress().NextPart == 0 {
		return // the shard took one part: none was written
	}
	keys := make(chan string)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for key := range keys {
				w.a.Bucket.Delete(w.ctx, key)
			}
		}()
	}
	if retried {
		store.List(w.ctx, w.a.Bucket, &blob.ListOptions{Prefix: w.key + ".parts/"}, func(obj *blob.ListObject) error {
			keys <- obj.Key
			return nil
		})
	} else {
		for p := 0; p < w.progress().NextPart; p++ {
			keys <- partKey(w.key, p)
			keys <- rejectsKey(partKey(w.key, p))
		}
	}
	close(keys)
	wg.Wait()
}

// shardRejects reads shard i of run's set ds and the rejects of its cache
// entry for the model of spec.
func (a *Activities) shardRejects(ctx context.Context, run, ds string, i int, spec features.Spec) (*dataset.Shard, []embed.Reject, error) {
	shard, err := a.readShard(ctx, ShardKey(run, ds, i))
	if err != nil {
		return nil, nil, err
	}
	rejects, err := a.readRejects(ctx, rejectsKey(features.Key(spec, shard.Digest())))
	return shard, rejects, err
}

// embeddedRejects is shardRejects for the steps after a set was embedded
// that list its rejects (the random draw, the report): an entry dropped
// since (another pass found it damaged, or crossed by two writers, and
// embeds the shard again) lists none, with a warning, rather than fail
// the pass that embedded it.
func (a *Activities) embeddedRejects(ctx context.Context, run, ds string, i int, spec features.Spec) (*dataset.Shard, []embed.Reject, error) {
	shard, rejects, err := a.shardRejects(ctx, run, ds, i, spec)
	if shard != nil && isNotFound(err) {
		warn(ctx, "a shard's cache entry was dropped since it was embedded: its rejects are not known", "shard", ShardKey(run, ds, i), "error", err)
		return shard, nil, nil
	}
	return shard, rejects, err
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
