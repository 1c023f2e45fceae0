// Package activities holds the steps of a debug pass. Each reads its inputs
// from blob storage, writes its outputs there, and returns small references
// (keys and counts) for the workflow to pass on, so vectors and pixels never
// enter workflow history.
//
// Every output key follows from the inputs alone, so a retried activity
// overwrites its own output and every step is idempotent.
package activities

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/apache/arrow/go/v15/arrow/memory"
	"go.temporal.io/sdk/temporal"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sync/singleflight"

	"dcd/internal/dataset"
	"dcd/internal/features"
	"dcd/internal/knn"
	"dcd/internal/ortrun"
	"dcd/internal/redact"
	"dcd/internal/store"
)

// Activities are the steps, sharing the process's dependencies. Create one
// per worker process and register it once.
type Activities struct {
	Bucket   *blob.Bucket
	Mem      memory.Allocator
	Sessions *Sessions
	// Decoders is how many goroutines decode images per embedding.
	Decoders int
	// Readers is how many images each embedding reads at once; 0 means
	// embed.DefaultReaders. A pool stored one object per image on a
	// remote store needs more: each read waits on the store's latency.
	Readers int
	// Buckets opens the other buckets that absolute URLs in datasets name,
	// once each. Nil: one set shared by the process.
	Buckets *store.Buckets
	// StorageURL is Bucket's URL, handed to external trainers as
	// {storage}; they read their data and write their model there.
	StorageURL string
	// TrainerEnv is added to an external trainer's environment, the
	// worker's own: a worker sets DCD_ORT_LIB and DCD_EP to the ONNX
	// Runtime library and execution provider it runs, so that `starter
	// train-head` runs the target as the worker would, however the worker
	// was given them (flags or environment).
	TrainerEnv []string

	trainers sync.WaitGroup // external trainers running (WaitTrainers)
}

// WaitTrainers waits up to d for a's external trainers still running to
// be stopped: a worker's Stop cancels their activities but does not wait
// for them, and a worker that exits first leaves the trainer's process
// group running (holding its GPU) and its last log lines unwritten. It
// reports whether they all ended. (A function, not a method: every method
// of Activities is registered as an activity.)
func WaitTrainers(a *Activities, d time.Duration) bool {
	done := make(chan struct{})
	go func() { a.trainers.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// DefaultConcurrency is how many activities of a queue a worker runs at
// once unless told, where they run models on the execution provider ep:
// at least two, so that one shard's listing and commit overlap another's
// inference, and on a larger machine one per four CPUs, where a shard's
// steps between its batches leave most cores idle; on 16 cores the CPU
// embedding benchmark measured 0.87 of inference alone's speed with 4 at
// once, against 0.69 with 2. Embedding on CUDA, the CPUs only read,
// decode and hand batches over, so the gpu queue of a CUDA worker runs
// one per two CPUs: on an H200 with 16 cores, 8 at once embedded 5-10 %
// (ResNet-50) to 25-60 % (the demo's backbone) more images a second
// than 4.
//
// CPUs are GOMAXPROCS, not NumCPU: since Go 1.25 it follows a container's
// CPU limit, which NumCPU (the host's cores) does not.
func DefaultConcurrency(ep string) int {
	if ep == "cuda" {
		return max(2, runtime.GOMAXPROCS(0)/2)
	}
	return max(2, runtime.GOMAXPROCS(0)/4)
}

// DefaultThreads is each model session's ONNX Runtime intra-op threads
// unless told: the CPUs shared among the activities that run at once.
// Their batches run at the same time (a session runs concurrent batches),
// so sessions on every core would oversubscribe them: with two at once on
// two cores, ResNet-50 embedded 10-20 % slower than with a thread each.
// The k-NN search's products run one at a time and take every CPU.
func DefaultThreads(concurrency int) int { return max(1, runtime.GOMAXPROCS(0)/max(concurrency, 1)) }

// Sessions are the ONNX Runtime sessions a worker opens, one per model
// spec, kept because creating one costs far more than a batch: up to
// maxSessions of them, the least recently used of those no activity
// holds closed beyond that (a long-lived worker sees new models, each a
// retrained target, and ONNX Runtime never gives a session's memory, on
// the GPU, back to others).
type Sessions struct {
	opt, search ortrun.Options
	mu          sync.Mutex
	sessions    map[string]*heldSession // by spec digest and provider
	// loads makes the activities that start together on a model wait for
	// one load: each would otherwise hold the model's bytes, ORT's copy
	// and (with -ep cuda) its weights on the GPU at once.
	loads    singleflight.Group
	searcher *knn.Searcher
	// checked holds what checking a model found (checkModel), by the
	// model's digest and how the config uses it: a recurring pass's
	// CheckModels, on its critical path, then costs reading the model and
	// hashing it, not loading it in ONNX Runtime twice and running it.
	checked map[string]ModelRef
	// loaded holds the bytes of the pool features read for searches that
	// have not ended (searchBytes at most): a recurring pass keeps many
	// cached shards' reads in flight to hide a store's latency, and those
	// that arrive before a search is free wait here, not in the heap.
	loaded *semaphore.Weighted
}

// heldSession is a session, how many activities use it, and when one last
// took it.
type heldSession struct {
	s     *ortrun.Session
	users int
	used  time.Time
}

// maxSessions is how many sessions a worker keeps: a pass uses two models
// (similarity and target), a worker may serve two passes' at once.
const maxSessions = 4

// take returns the session of key, if open, counted as in use until
// release is called.
func (s *Sessions) take(key string) (sess *ortrun.Session, release func(), ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.sessions[key]
	if !ok {
		return nil, nil, false
	}
	h.users++
	h.used = time.Now()
	return h.s, sync.OnceFunc(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		h.users--
	}), true
}

// keep stores a session just opened, and closes the least recently used
// sessions no activity holds beyond maxSessions.
func (s *Sessions) keep(key string, sess *ortrun.Session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessions == nil {
		s.sessions = map[string]*heldSession{}
	}
	s.sessions[key] = &heldSession{s: sess, used: time.Now()}
	for len(s.sessions) > maxSessions {
		oldest := ""
		for k, h := range s.sessions {
			if k != key && h.users == 0 && (oldest == "" || h.used.Before(s.sessions[oldest].used)) {
				oldest = k
			}
		}
		if oldest == "" {
			return // every other one is in use: they go later
		}
		s.sessions[oldest].s.Close()
		delete(s.sessions, oldest)
	}
}

// closeIdle closes the sessions no activity holds and says how many.
func (s *Sessions) closeIdle() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, h := range s.sessions {
		if h.users == 0 {
			h.s.Close()
			delete(s.sessions, k)
			n++
		}
	}
	return n
}

// searchBytes bounds the pool features a worker holds for its searches:
// 43 shards of 2,000 rows at d = 384, 8 at d = 2,048, each read while
// others are searched.
const searchBytes = 128 << 20

// hold takes n bytes of the searches' budget (all of it, for more),
// waiting until they are free; release gives them back, once however
// often it is called.
func (s *Sessions) hold(ctx context.Context, n int64) (release func(), err error) {
	n = min(max(n, 1), searchBytes)
	s.mu.Lock()
	if s.loaded == nil {
		s.loaded = semaphore.NewWeighted(searchBytes)
	}
	loaded := s.loaded
	s.mu.Unlock()
	if err := loaded.Acquire(ctx, n); err != nil {
		return nil, err
	}
	return sync.OnceFunc(func() { loaded.Release(n) }), nil
}

// checkedModel is what an earlier check of the model found, if any.
func (s *Sessions) checkedModel(key string) (ModelRef, bool) {
	if s == nil {
		return ModelRef{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.checked[key]
	return m, ok
}

func (s *Sessions) rememberModel(key string, m ModelRef) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.checked == nil || len(s.checked) >= maxChecked {
		s.checked = map[string]ModelRef{}
	}
	s.checked[key] = m
}

// maxChecked bounds the checks a worker remembers: a pass checks one or
// two models, and an external trainer's output is a new model each time.
const maxChecked = 256

// NewSessions configures the models' sessions with opt and the k-NN
// searcher's with search.
func NewSessions(opt, search ortrun.Options) *Sessions {
	return &Sessions{opt: opt, search: search}
}

// Close releases the sessions.
func (s *Sessions) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.sessions {
		h.s.Close()
	}
	s.sessions = nil
	if s.searcher != nil {
		s.searcher.Close()
		s.searcher = nil
	}
}

// ModelRef is a model as the pass uses it: where it is, the digest it had
// when the pass checked it, and what is read from it.
type ModelRef struct {
	Path string        `json:"path"`
	Spec features.Spec `json:"spec"`
	// Dims are the values per image of each output, as CheckModels measured
	// them; every shard must give the same.
	Dims []int `json:"dims,omitempty"`
	// EP overrides the worker's execution provider for this model's
	// embedding sessions; empty keeps the worker's.
	EP string `json:"ep,omitempty"`
	// Batch is the batch size the model's image input is fixed to (an
	// export without a dynamic batch axis); 0: any. Embedding runs
	// batches of it (embed.Embedder.FixedBatch).
	Batch int `json:"batch,omitempty"`
}

// Dataset names the datasets of a pass, as used in shard keys.
const (
	Train        = "train"
	Test         = "test"
	ErrorSample  = "error_sample"
	ErrorHeldout = "error_heldout"
	Pool         = "pool"
	DebugTrain   = "debug_train"
)

// invalid is a non-retryable error for input that no retry can fix.
func invalid(format string, args ...any) error {
	return temporal.NewNonRetryableApplicationError(fmt.Sprintf(format, args...), InvalidInput, nil)
}

// InvalidInput is the type of the error that fails a pass over its
// config or data: its message names the field, file or image, so the
// step that found it adds nothing.
const InvalidInput = "InvalidInput"

// offClass is the error of an image of dataset ds whose label is none of
// the classes, which fails the pass where the set's labels must be classes.
func offClass(ds string, it dataset.Item, classes dataset.Classes) error {
	if it.Label == "" {
		return invalid("data.%s: image %s has no label (an empty label, or a WebDataset sample without a .cls); expected one of classes %v", ds, redact.URL(it.Key), classes)
	}
	return invalid("data.%s: image %s has label %q, which is not in classes %v%s", ds, redact.URL(it.Key), it.Label, classes, labelHint([]string{it.Label}, classes))
}

func (a *Activities) readShard(ctx context.Context, key string) (*dataset.Shard, error) {
	data, err := store.ReadAll(ctx, a.Bucket, key)
	if gcerrors.Code(err) == gcerrors.NotFound {
		// The pass's plan wrote it, on whichever worker took the plan.
		err = fmt.Errorf("%w: the pass's plan wrote it, so a worker that does not see it is on another bucket than the one that planned: give every worker the same -storage (DCD_STORAGE)", err)
	}
	if err != nil {
		return nil, store.Classify(err, key)
	}
	s, err := dataset.ParseShard(key, data)
	if err != nil {
		return nil, temporal.NewNonRetryableApplicationError(err.Error(), "InvalidShard", err)
	}
	return s, nil
}

// session returns the ORT session for a model spec, loading the model from
// storage the first time and checking it is still the model the pass
// checked, and a release to call when done with it. Inner tensors the spec
// reads are made graph outputs in memory (onnx.ExposeOutputs); the model
// in storage is left as it is.
func (a *Activities) session(ctx context.Context, m ModelRef) (*ortrun.Session, func(), error) {
	d := m.Spec.Digest() + "/" + m.EP
	ss := a.Sessions
	for {
		if s, release, ok := ss.take(d); ok {
			return s, release, nil
		}
		_, err := sharedLoad(ctx, &ss.loads, d, func(ctx context.Context) (struct{}, error) {
			// A load that ended between the look-up above and this one's
			// start has kept its session: one load a model.
			if _, release, ok := ss.take(d); ok {
				release()
				return struct{}{}, nil
			}
			s, err := a.loadSession(ctx, m)
			if err != nil {
				return struct{}{}, err
			}
			ss.keep(d, s)
			return struct{}{}, nil
		})
		if err != nil {
			return nil, nil, err
		}
		// Taken on the next turn, unless other models' loads closed it
		// meanwhile, idle: then loaded again.
	}
}

// sharedLoad runs load once for the activities that ask for key at once
// (g), in a context not cancelled with the first's (detached), whose end
// would fail the others' waits; each waits until its own context ends.
func sharedLoad[T any](ctx context.Context, g *singleflight.Group, key string, load func(context.Context) (T, error)) (T, error) {
	ch := g.DoChan(key, func() (any, error) {
		lctx, cancel := detached(ctx)
		defer cancel()
		return load(lctx)
	})
	var zero T
	testHookSharedWait()
	select {
	case r := <-ch:
		if r.Err != nil {
			return zero, r.Err
		}
		return r.Val.(T), nil
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

func (a *Activities) loadSession(ctx context.Context, m ModelRef) (*ortrun.Session, error) {
	testHookLoadSession(ctx)
	data, err := ReadModel(ctx, a.buckets(), a.Bucket, m.Path)
	if err != nil {
		return nil, store.Classify(err, m.Path)
	}
	if got := digest(data); got != m.Spec.ModelDigest {
		return nil, invalid("model %s changed during the pass: digest %s, the pass started with %s", m.Path, got, m.Spec.ModelDigest)
	}
	model, outputs, err := exposeModel(data, m.Spec)
	if err != nil {
		return nil, invalid("model %s: %v", m.Path, err)
	}
	opt := a.Sessions.opt
	if m.EP != "" {
		opt.EP = m.EP
	}
	s, err := a.Sessions.open(m.Path, model, []string{m.Spec.Input}, outputs, opt)
	if err != nil {
		return nil, temporal.NewNonRetryableApplicationError(err.Error(), "ModelLoad", err)
	}
	return s, nil
}

// open makes a model's session. The sessions kept for later (maxSessions)
// hold their weights and memory pools, on a GPU its memory: a model that
// does not load beside them for want of memory is tried again once they
// are closed (not one that fails otherwise: the others' passes would load
// theirs again for nothing).
func (s *Sessions) open(name string, model []byte, inputs, outputs []string, opt ortrun.Options) (*ortrun.Session, error) {
	sess, err := newSession(name, model, inputs, outputs, opt)
	if err != nil && outOfMemory(err) && s != nil && s.closeIdle() > 0 {
		sess, err = newSession(name, model, inputs, outputs, opt)
	}
	return sess, err
}

// outOfMemory says whether ONNX Runtime failed for want of memory: its
// allocators', CUDA's and cuDNN's wordings, in its own error (the innermost
// wrapped), not the model's path or tensor names around it ("bedroom.onnx"
// holds "oom").
func outOfMemory(err error) bool {
	for inner := errors.Unwrap(err); inner != nil; inner = errors.Unwrap(inner) {
		err = inner
	}
	msg := strings.ToLower(err.Error())
	for _, s := range []string{"out of memory", "failed to allocate", "bad_alloc", "smaller than requested bytes", "alloc_failed"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// newSession makes a model's session; a test replaces it.
var newSession = ortrun.NewSession

// detached is ctx for a load other activities wait on too: not cancelled
// with the activity that started it, whose end would fail theirs, but
// ended at its deadline still, so that a read stalled mid-body does not
// hold the load, and every activity that joins it, until the worker ends.
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	d := context.WithoutCancel(ctx)
	if deadline, ok := ctx.Deadline(); ok {
		return context.WithDeadline(d, deadline)
	}
	return d, func() {}
}

// testHookLoadSession runs as a session's load starts, with its context.
var testHookLoadSession = func(context.Context) {}

// testHookSharedWait runs as an activity begins to wait on a shared load.
var testHookSharedWait = func() {}

func (a *Activities) knn() (*knn.Searcher, error) {
	ss := a.Sessions
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.searcher == nil {
		s, err := knn.NewSearcher(ss.search)
		if err != nil {
			return nil, err
		}
		ss.searcher = s
	}
	return ss.searcher, nil
}

// digest is the hex SHA-256 of b.
func digest(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// isNotFound reports a missing object.
func isNotFound(err error) bool {
	var appErr *temporal.ApplicationError
	return errors.As(err, &appErr) && appErr.Type() == "StorageNotFound"
}
