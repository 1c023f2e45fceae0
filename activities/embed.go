package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
	"golang.org/x/sync/errgroup"

	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/store"
	"dcd/internal/webdataset"
	"dcd/schemas"
)

// EmbedShardInput is one shard of one dataset to embed with one model.
type EmbedShardInput struct {
	Run       string
	Dataset   string
	Shard     int
	Model     ModelRef
	BatchSize int
	// PartSize is the images after which a part ends (at the batch that
	// reaches it: whole batches), the unit committed to storage and
	// resumed after by a retried attempt; 0: parts are cut by time alone
	// (partTime).
	PartSize int
	// K > 0 (pool shards): search the features, cached or just embedded,
	// for the K nearest images per query right away, as TopKShard would,
	// so a shard costs one activity instead of two.
	K int
	// CachedOnly only looks in the cache: a shard that is not cached is
	// left alone (Cached false), for the embedding queue to embed.
	CachedOnly bool
	// Scan names the scan the search's partial is of (TopKShardInput).
	Scan string `json:",omitempty"`
	// Reread reads again a cached entry's images recorded as unreadable
	// whatever the dataset (entryRejects): the pool's and train's too.
	Reread bool `json:",omitempty"`
}

// EmbedShardResult says where the features are and how the work went.
type EmbedShardResult struct {
	FeatureKey string
	Images     int // embedded
	Rejects    int // skipped: unreadable or undecodable
	Cached     bool
	// ResumedFrom is the number of images a previous attempt had already
	// committed; 0 when this attempt started from the beginning.
	ResumedFrom int
	// TopK is the search of the shard (EmbedShardInput.K); nil when the
	// shard still needs TopKShard.
	TopK *TopKShardResult `json:",omitempty"`
}

// embedProgress is the heartbeat: parts before NextPart are in storage,
// part p holding the shard's images from Starts[p] up to Starts[p+1]; a
// retry resumes at image Starts[NextPart].
type embedProgress struct {
	NextPart int
	Starts   []int `json:",omitempty"`
}

// resume reads a retried attempt's progress from its heartbeat. A worker
// from before parts were cut by time heartbeated NextPart alone, its parts
// being partSize images each.
func resume(ctx context.Context, partSize, images int) embedProgress {
	var p embedProgress
	if !activity.HasHeartbeatDetails(ctx) || activity.GetHeartbeatDetails(ctx, &p) != nil || p.NextPart < 0 {
		return embedProgress{Starts: []int{0}}
	}
	if len(p.Starts) != p.NextPart+1 {
		p.Starts = nil
		for i := 0; i <= p.NextPart; i++ {
			p.Starts = append(p.Starts, min(i*max(partSize, 1), images))
		}
	}
	return p
}

// partTime is how long a part's embedding runs before it is written: a
// worker that dies loses about this much work, and storage sees a write
// every few seconds however fast the model is.
const partTime = 5 * time.Second

// HeartbeatThrottle is the most a worker's SDK may hold a heartbeat back
// (worker.Options.MaxHeartbeatThrottleInterval): by default it sends one
// per 0.8 heartbeat timeouts, 24 s at the default 30 s, so a worker killed
// then lost the parts written since the last one sent; at partTime, a
// part's progress reaches the server about when the next is written.
const HeartbeatThrottle = partTime

// EmbedShard computes a shard's features, unless the cache already has them
// for this model and shard content. It works in parts of a few seconds
// (partTime, or PartSize images in whole batches): each part is written to storage,
// then heartbeaten, so a worker that dies mid-shard costs at most one part
// when the retry resumes.
func (a *Activities) EmbedShard(ctx context.Context, in EmbedShardInput) (EmbedShardResult, error) {
	return a.embedShardInto(ctx, in, nil)
}

// embedShardInto is EmbedShard, with a cached pool shard's neighbours
// offered to into (CachedShards) rather than written at TopKKey when into
// is not nil.
func (a *Activities) embedShardInto(ctx context.Context, in EmbedShardInput, into *rangePartial) (EmbedShardResult, error) {
	if into != nil {
		defer into.settle(in.Shard, false) // a shard not searched: no-op for one that was
	}
	start := time.Now()
	shardKey := ShardKey(in.Run, in.Dataset, in.Shard)
	shard, err := a.readShard(ctx, shardKey)
	if err != nil {
		return EmbedShardResult{}, err
	}
	key := features.Key(in.Model.Spec, shard.Digest())
	res := EmbedShardResult{FeatureKey: key}
	search := TopKShardInput{Run: in.Run, Shard: in.Shard, Model: in.Model, K: in.K, Scan: in.Scan}
	var reads *searchReads
	if in.CachedOnly && in.K > 0 && in.Dataset == Pool {
		// A recurring pass's shard, expected in the cache: its search's
		// reads go out with the rejects' instead of after them.
		reads = a.readSearch(ctx, search, shard)
		defer func() {
			if reads != nil {
				reads.drop()
			}
		}()
	}
	rejects, ok, fixed, err := a.entryRejects(ctx, in.Dataset, key, in.Reread)
	if reads != nil && (err != nil || !ok) { // no entry to read: not yet, or never
		reads.abandon()
		reads = nil
	}
	if err == nil && !ok && !fixed {
		rejects, ok, err = a.narrowCached(ctx, in.Dataset, in.Reread, in.Model, shardKey, shard.Digest(), key, len(shard.Items))
	}
	if err != nil {
		return res, err
	}
	if ok {
		res.Cached, res.Rejects, res.Images = true, len(rejects), len(shard.Items)-len(rejects)
		if in.K > 0 && in.Dataset == Pool {
			// The search may wait on the worker's search memory, shared
			// with its CachedShards batches, and on the queries' read.
			defer beating(ctx, func() []any { return nil })()
			if reads != nil && !reads.match(res.Images) {
				// Read while another worker wrote the entry: read it again.
				reads.abandon()
				reads = nil
			}
			if reads == nil {
				reads = a.readSearch(ctx, search, shard)
			}
			if reads.disagree(shard, rejects) {
				// Still: two workers' commits of the entry crossed, one's
				// feature file beside the other's rejects, which name
				// other images. It goes, for the retry to embed the shard
				// again (or to find the entry a writer completes).
				rows := len(reads.items)
				reads.drop()
				reads = nil
				if err := a.Bucket.Delete(ctx, rejectsKey(key)); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
					return res, err
				}
				return res, fmt.Errorf("activities: the cached features of %s hold %d rows, its rejects %d of its %d images (two workers wrote the entry at once): %w",
					shardKey, rows, len(rejects), len(shard.Items), errEntryDropped)
			}
			r, err := a.search(ctx, search, reads, into)
			if err != nil {
				return res, err
			}
			// From the lookup's start, not the reads': the search's
			// own time, which leaves out a wait on the batch (into).
			r.Started, r.Took = start, r.Took+r.Started.Sub(start)
			res.TopK = &r
		}
		return res, nil
	}
	if in.CachedOnly {
		return res, nil
	}
	if err := in.Model.Spec.Embeddable(); err != nil {
		return res, err // retried: another worker may embed it
	}

	// Loading the model (read from the store and a session made, by the
	// first of the activities that start on it) may outlast a heartbeat
	// timeout: beat meanwhile, with the resume point of the attempt
	// before, which a beat without it would lose.
	progress := resume(ctx, in.PartSize, len(shard.Items))
	stop := beating(ctx, func() []any { return []any{progress} })
	defer stop()
	sess, release, err := a.session(ctx, in.Model)
	stop()
	if err != nil {
		return res, err
	}
	release = sync.OnceFunc(release)
	defer release()
	e := &embed.Embedder{Name: in.Model.Path, Outputs: in.Model.Spec.Outputs, Session: sess, Spec: in.Model.Spec.Preprocess, BatchSize: in.BatchSize, FixedBatch: in.Model.Batch,
		Decoders: a.Decoders, Readers: a.Readers}
	w, err := a.embedShard(ctx, e, in.Model, shardKey, key, shard.Items, in.PartSize, progress)
	if err != nil {
		return res, err
	}
	res.ResumedFrom = w.resumedFrom
	committing := beating(ctx, func() []any { return []any{w.progress()} }) // the last part's copy and the file's close
	defer committing()
	res, err = w.commit(len(shard.Items), res)
	committing()
	// The model's done: its session may go to another activity, or be
	// closed for memory, while the search waits on its own.
	release()
	if err != nil || in.K <= 0 || in.Dataset != Pool {
		return res, err
	}
	// Search the new features here too, sparing the shard a TopKShard
	// activity; a retry after a failed search finds the shard cached. It
	// may wait on the worker's search memory and the queries' read.
	defer beating(ctx, func() []any { return nil })()
	written := a.readSearch(ctx, search, shard)
	if written.disagree(shard, w.rejects) {
		// Another worker's commit of the entry crossed this one's: its
		// rows beside these rejects, or the reverse. The retry's lookup
		// finds the pair, drops it, and embeds the shard again.
		written.drop()
		return res, fmt.Errorf("activities: the cache entry %s of %s holds other rows than this worker wrote (another wrote it at once)", key, shardKey)
	}
	r, err := a.search(ctx, search, written, nil)
	if err != nil {
		return res, err
	}
	res.TopK = &r
	return res, nil
}

// embedShard embeds the shard's items after the parts in storage, in one
// Embed, while a shardWriter turns the batches into the feature file behind
// it. Every few seconds (partTime, or maxImages images) the writer
// checkpoints the part so far, which is then heartbeaten, so a retry
// resumes after it. An output that is not finite, or whose size differs
// from what the pass measured, fails without retries, naming the model and
// the shard.
func (a *Activities) embedShard(ctx context.Context, e *embed.Embedder, m ModelRef, shard, key string, items []dataset.Item, maxImages int, progress embedProgress) (*shardWriter, error) {
	w, err := a.newShardWriter(ctx, m.Spec, shard, key, items, progress)
	if err != nil {
		return nil, err
	}
	first := w.resumedFrom
	if first > 0 {
		activity.GetLogger(ctx).Info("resuming shard", "shard", shard, "part", w.progress().NextPart, "images", first)
	}
	rest := items[min(first, len(items)):]
	images := make([]embed.Image, len(rest))
	for i, it := range rest {
		images[i] = embed.Image{ID: it.ID, URI: it.Key, Label: it.Label, Domain: it.Domain}
	}
	done, inPart, began := first, 0, time.Now()
	var stop <-chan struct{} // the worker's stop: a part committed, the rest is another worker's
	if activity.IsActivity(ctx) {
		stop = activity.GetWorkerStopChannel(ctx)
	}
	// A batch of a large model on a few cores may outlast a heartbeat
	// timeout: beat meanwhile, with the parts stored so far, while batches
	// come.
	stopBeats, moved := beatingWhileMoving(ctx, func() []any { return []any{w.progress()} })
	defer stopBeats()
	_, err = e.Embed(ctx, images, a.packedRead(images), func(b embed.Batch) error {
		moved()
		if len(b.Images) > 0 {
			if err := m.checkDims(shard, b.Dims); err != nil {
				return err
			}
			if err := m.checkStorable(b); err != nil {
				return err
			}
		}
		if err := w.add(b); err != nil {
			return err
		}
		n := len(b.Images) + len(b.Rejects)
		done, inPart = done+n, inPart+n
		if done < len(items) && ((maxImages > 0 && inPart >= maxImages) || time.Since(began) >= partTime) {
			if err := w.cut(); err != nil {
				return err
			}
			inPart, began = 0, time.Now()
			select {
			case <-stop:
				// Retried at once, from this part, elsewhere: not once
				// the stop's grace cancels the part under way, and the
				// worker's failure report, sent after its client closed,
				// is lost to a heartbeat timeout. The part just cut is
				// written first (the writer ends once its queue is), for
				// the heartbeat to name it.
				w.stop()
				activity.RecordHeartbeat(ctx, w.progress())
				return errWorkerStopping
			default:
			}
		}
		activity.RecordHeartbeat(ctx, w.progress())
		return nil
	})
	if err != nil {
		w.abort()
		activity.RecordHeartbeat(ctx, w.progress())
		var appErr *temporal.ApplicationError
		if errors.As(err, &appErr) {
			return nil, err
		}
		if oe := outputError(err, shard); oe != nil {
			return nil, oe
		}
		return nil, fmt.Errorf("activities: embed shard %s: %w", shard, err)
	}
	return w, nil
}

// errWorkerStopping ends an embedding at a part's end when its worker
// stops; Temporal retries it (a plain error).
var errWorkerStopping = errors.New("the worker is stopping: the shard goes on from its last part on another")

// narrowCached makes a float16 cache entry at key from the shard's float32
// entry, when there is one: rounding the cached features gives exactly
// what embedding again and storing float16 would, for a read and a write
// instead of the model, so a pool cached as float32 switches to float16
// without being embedded again. It returns the entry's rejects and whether
// it made one (its rejects read again as entryRejects does, for ds and
// reread). m is the model, and shardKey the shard, of images images, that
// errors name.
func (a *Activities) narrowCached(ctx context.Context, ds string, reread bool, m ModelRef, shardKey, shardDigest, key string, images int) ([]embed.Reject, bool, error) {
	spec := m.Spec
	if spec.StoredAs != schemas.Float16 {
		return nil, false, nil
	}
	wide := spec
	wide.StoredAs = ""
	src := features.Key(wide, shardDigest)
	rejects, ok, _, err := a.entryRejects(ctx, ds, src, reread)
	if err != nil || !ok {
		return nil, false, err
	}
	var b embed.Batch
	ms, err := features.LoadColumns(ctx, a.Bucket, src, spec.Columns, a.Mem)
	switch {
	case gcerrors.Code(err) == gcerrors.NotFound && len(rejects) == images:
		// every image of the shard was rejected: no file
	case gcerrors.Code(err) == gcerrors.NotFound: // the file is gone: embed the shard
		return nil, false, nil
	case ctx.Err() != nil || store.Transient(err):
		return nil, false, err // a retry may read it
	case err != nil: // damaged or unreadable: embed the shard instead
		activity.GetLogger(ctx).Warn("float32 cache entry not used", "key", src, "error", err)
		return nil, false, nil
	case len(ms[0].URIs)+len(rejects) != images: // not this shard's whole
		return nil, false, nil
	default:
		b.Images = make([]embed.Image, len(ms[0].URIs))
		for i, u := range ms[0].URIs {
			b.Images[i].URI = u
		}
		for _, m := range ms {
			b.Vectors, b.Dims = append(b.Vectors, m.Data), append(b.Dims, m.Dim)
		}
		if err := m.checkStorable(b); err != nil {
			return nil, false, outputError(err, shardKey)
		}
	}
	if b.Images == nil {
		// No file, as commit leaves none: nor one an earlier write left.
		if err := a.Bucket.Delete(ctx, key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			return nil, false, err
		}
	} else {
		rec := features.Record(a.Mem, spec.Columns, b, spec.StoredAs)
		err := store.WriteArrow(ctx, a.Bucket, key, rec.Schema(), a.Mem, rec)
		rec.Release()
		if err != nil {
			return nil, false, err
		}
	}
	rj, _ := json.Marshal(append([]embed.Reject{}, rejects...))
	if err := store.WriteAll(ctx, a.Bucket, rejectsKey(key), rj); err != nil {
		return nil, false, err
	}
	return rejects, true, nil
}

// cachedRejects returns the rejects of a complete cache entry, and whether
// there is one.
func (a *Activities) cachedRejects(ctx context.Context, key string) ([]embed.Reject, bool, error) {
	data, err := a.Bucket.ReadAll(ctx, rejectsKey(key))
	if err != nil {
		c := store.Classify(err, rejectsKey(key))
		if isNotFound(c) {
			return nil, false, nil
		}
		return nil, false, c // a bucket the worker may not read fails at once, named
	}
	var rejects []embed.Reject
	if err := json.Unmarshal(data, &rejects); err != nil {
		return nil, false, nil // a damaged entry is recomputed
	}
	return rejects, true, nil
}

// entryRejects is cachedRejects of dataset ds's entry at key, except that
// an E_sample, test or E_heldout entry one of whose unreadable images reads
// now is none (fixed): a pass fails for its E_sample's unreadable images,
// saying to fix them, and lists test's and E_heldout's, left out of the
// accuracies it reports; once fixed (uploaded, its access granted) the
// shard must be embedded again, although its content (keys and versions)
// is what it was. The pool's and train's are read again only when the
// pass asks to (reread): they list many images long gone, which each
// recurring pass would read, and an image fewer there costs a row, not a
// number the pass reports.
func (a *Activities) entryRejects(ctx context.Context, ds, key string, reread bool) (rejects []embed.Reject, ok, fixed bool, err error) {
	rejects, ok, err = a.cachedRejects(ctx, key)
	if ok && (reread || ds == ErrorSample || ds == Test || ds == ErrorHeldout) && a.unreadFixed(ctx, rejects, reread) {
		return nil, false, true, nil
	}
	return rejects, ok, false, err
}

// recheckUnread is how many of a cached shard's unreadable images a lookup
// reads again.
const recheckUnread = 8

// unreadFixed says whether an image that a cache entry records as
// unreadable (gone, forbidden) reads now.
// Only the first recheckUnread are read, unless all, which reads every
// one, recheckAtOnce at a time, until one reads: a pass asked to
// (Reread), whose shards may list many images gone for good before one
// it is meant to find.
func (a *Activities) unreadFixed(ctx context.Context, rejects []embed.Reject, all bool) bool {
	var unread []string
	for _, r := range rejects {
		if r.Unread() && (all || len(unread) < recheckUnread) {
			unread = append(unread, r.URI)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var fixed atomic.Bool
	var g errgroup.Group
	g.SetLimit(recheckAtOnce)
	for _, uri := range unread {
		if fixed.Load() {
			break
		}
		g.Go(func() error {
			if _, err := a.read(ctx, uri); err == nil || errors.Is(err, embed.ErrRejected) {
				fixed.Store(true)
				cancel()
			}
			return nil
		})
	}
	g.Wait()
	return fixed.Load()
}

// recheckAtOnce is how many unreadable images unreadFixed reads at once:
// from an object store, each a round trip.
const recheckAtOnce = 16

// read fetches an image: a key in the worker's bucket, or an absolute URL
// (s3://bucket/key?region=…, file:///dir/file, …) in a bucket opened once
// per process.
func (a *Activities) read(ctx context.Context, key string) ([]byte, error) {
	return ReadImage(ctx, a.buckets(), a.Bucket, key)
}

// ReadImage reads an image to embed, a key in def or an absolute URL (in
// a bucket of bs): one that is gone or forbidden, or larger than
// MaxImageBytes, is unreadable (a reject, not a retry), for a pass's
// embeddings and an external trainer's (`starter train-head`) alike.
func ReadImage(ctx context.Context, bs *store.Buckets, def *blob.Bucket, uri string) ([]byte, error) {
	data, err := bs.ReadAtMost(ctx, def, uri, MaxImageBytes)
	return data, unreadable(err)
}

// MaxImageBytes is the largest file read as an image (dataset.MaxImageBytes).
const MaxImageBytes = dataset.MaxImageBytes

// unreadable marks the errors of an image that is gone or forbidden: a
// reject, not a retry. Credentials the store refused (expired, revoked)
// are not the image's: recorded as its reject, it would stay one in the
// cache after they were fixed. The shard fails instead, retried as any
// storage failure, and says why.
func unreadable(err error) error {
	switch {
	case store.CredentialsRefused(err):
		return fmt.Errorf("the worker's credentials were refused or not found (fix them; no image is rejected for it): %w", err)
	case errors.Is(err, store.ErrTooLarge) || errors.Is(err, store.ErrPastEnd):
		// The file is there to read, and no image: a reject as a file
		// that does not decode is, not one the worker may not read
		// (which a shard of nothing else fails for).
		return fmt.Errorf("%w: %w", embed.ErrRejected, err)
	case store.Permanent(err):
		return fmt.Errorf("%w: %w", embed.ErrUnreadable, err)
	}
	return err
}

// spanBytes bounds one range read of a WebDataset archive, and
// spanReadahead is how many are fetched beside the one being read: 16 MiB
// of a shard in flight. An object store streams one range read at about
// one connection's bandwidth, often under 100 MB/s, which a GPU embedding
// photos outruns, and a shard's first images wait for their whole span.
// Small spans side by side answer both: on a simulated store (5 ms a read,
// 50 MB/s; webdataset's BenchmarkReaderRemote) 1 MiB spans 15 ahead read
// 360 MiB/s with the first image after 28 ms, where 8 MiB spans one at a
// time read 46 MiB/s and made it wait 168 ms.
const (
	spanBytes     = 1 << 20
	spanReadahead = 15
)

// packedRead is read for images, except that WebDataset members (see
// package webdataset) lying together in an archive are fetched with one
// range read per span of them instead of one read each: per-object reads
// cost more than a small model's inference.
func (a *Activities) packedRead(images []embed.Image) embed.ReadFunc {
	var members []webdataset.Member
	for _, im := range images {
		if m, ok := webdataset.ParseKey(im.URI); ok && m.Size <= spanBytes { // larger ones are read alone
			members = append(members, m)
		}
	}
	if len(members) == 0 {
		return a.read
	}
	spans := webdataset.NewReader(members, func(ctx context.Context, archive string, offset, length int64) ([]byte, error) {
		return a.buckets().ReadRange(ctx, a.Bucket, archive, offset, length)
	}, spanBytes)
	spans.Readahead = spanReadahead
	return func(ctx context.Context, uri string) ([]byte, error) {
		m, ok := webdataset.ParseKey(uri)
		if !ok || m.Size > spanBytes {
			// A span of its own, held until decoded: read alone, which
			// reserves its bytes with the embedding's other reads (a
			// pool of packed 150 MB scans), as spans do not; or refused.
			return a.read(ctx, uri)
		}
		data, err := spans.Read(ctx, m)
		if errors.Is(err, store.ErrPastEnd) {
			// The span runs past the archive's end, but this member
			// may not: alone, it is read or rejected on its own.
			return a.read(ctx, uri)
		}
		return data, unreadable(err)
	}
}
