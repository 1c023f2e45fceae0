package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"dcd/internal/dataset"
	"dcd/internal/ortrun"
	"dcd/internal/store"
	"dcd/internal/webdataset"
	"dcd/schemas"
)

// CheckModelsInput is the pass's models as configured.
type CheckModelsInput struct {
	Target schemas.Model
	// Similarity is nil when the target's features serve for similarity.
	Similarity *schemas.Model
	// Classes is how many classes the config lists (read from
	// ClassesFile, when it names one): the target's logits must be as
	// many, said now rather than when the first method is evaluated,
	// after the pool's embedding and every retraining. 0: not checked.
	Classes     int    `json:",omitempty"`
	ClassesFile string `json:",omitempty"`
}

// CheckModelsResult pins the models the pass will use.
type CheckModelsResult struct {
	// Target yields the columns "features" and "logits".
	Target ModelRef
	// Similarity yields the column "features"; it equals Target when the
	// config names no similarity model, so the pool is embedded once.
	Similarity ModelRef
}

// CheckModels reads each model, records its digest, fills the
// preprocessing the config leaves out from the model's input shape, makes
// inner tensors the config names readable (onnx.ExposeOutputs), and runs the
// model once to learn each output's values per image, so a wrong name or
// size fails before any image is read.
func (a *Activities) CheckModels(ctx context.Context, in CheckModelsInput) (CheckModelsResult, error) {
	target, err := a.checkModel(ctx, modelField{name: "target"}, in.Target, []string{in.Target.Features, in.Target.Logits}, []string{"features", "logits"})
	if err != nil {
		return CheckModelsResult{}, err
	}
	if n := in.Classes; n > 0 && len(target.Dims) == 2 && target.Dims[1] != n {
		field := "classes"
		if in.ClassesFile != "" {
			field = fmt.Sprintf("classes_file (%s)", in.ClassesFile)
		}
		return CheckModelsResult{}, invalid("config: %s: there are %d classes, but the target %s gives %d logits per image in %q; list the model's classes, in its output's order",
			field, n, in.Target.Path, target.Dims[1], in.Target.Logits)
	}
	res := CheckModelsResult{Target: target, Similarity: target}
	if in.Similarity != nil {
		s := *in.Similarity
		res.Similarity, err = a.checkModel(ctx, modelField{name: "similarity"}, s, []string{s.Features}, []string{"features"})
	}
	return res, err
}

// CompleteTarget fills what a train job written by hand leaves out of its
// target (schemas.TrainJob), as CheckModels fills a pass's config: the
// image input (the model's only one), the preprocessing's layout and sizes
// from the input's shape, and the batch size the input is fixed to (0:
// any). It runs the model once, so a wrong tensor name fails before a
// trainer embeds any image. Logits may be empty: a backbone without a head
// of its own. ORT must be initialised.
func CompleteTarget(ctx context.Context, bs *store.Buckets, def *blob.Bucket, m schemas.Model) (schemas.Model, int, error) {
	a := &Activities{Bucket: def, Buckets: bs}
	outputs, columns := []string{m.Features}, []string{"features"}
	if m.Logits != "" {
		outputs, columns = append(outputs, m.Logits), append(columns, "logits")
	}
	ref, err := a.checkModel(ctx, modelField{name: "target"}, m, outputs, columns)
	if err != nil {
		return m, 0, err
	}
	m.Input, m.Preprocess = ref.Spec.Input, ref.Spec.Preprocess
	return m, ref.Batch, nil
}

func (a *Activities) checkModel(ctx context.Context, field modelField, m schemas.Model, outputs, columns []string) (ModelRef, error) {
	data, err := ReadModel(ctx, a.buckets(), a.Bucket, m.Path)
	if err != nil {
		if settingUnread(ctx, err) {
			return ModelRef{}, invalid("config: %s: cannot read model %q: %v", field.sub("path"), m.Path, err)
		}
		return ModelRef{}, err
	}
	sum := digest(data)
	use, _ := json.Marshal(struct {
		Model            schemas.Model
		Outputs, Columns []string
	}{m, outputs, columns})
	key := sum + string(use)
	if ref, ok := a.Sessions.checkedModel(key); ok {
		return ref, nil
	}
	ins, _, err := ortrun.Describe(data)
	if err != nil {
		return ModelRef{}, invalid("config: %s: %q is not an ONNX model ONNX Runtime can load: %v", field.sub("path"), m.Path, err)
	}
	input := m.Input
	if input == "" {
		if len(ins) != 1 {
			return ModelRef{}, invalid("config: %s: model %q has %d inputs, name the image input", field.sub("input"), m.Path, len(ins))
		}
		input = ins[0].Name
	}
	if !slices.ContainsFunc(ins, func(io ortrun.IO) bool { return io.Name == input }) {
		return ModelRef{}, invalid("config: %s: model %q has no input %q (inputs: %s)", field.sub("input"), m.Path, input, names(ins))
	}
	ref, err := a.checkModelSpec(field, m, data, sum, ins, input, outputs, columns)
	if err == nil {
		a.Sessions.rememberModel(key, ref)
	}
	return ref, err
}

func names(ios []ortrun.IO) string {
	var s []string
	for _, io := range ios {
		s = append(s, fmt.Sprintf("%q %v", io.Name, io.Dimensions))
	}
	return fmt.Sprint(s)
}

// PlanInput is one dataset to cut into shards.
type PlanInput struct {
	Run       string
	Name      string // train, test, error_sample, error_heldout, pool, debug_train
	Dataset   schemas.Dataset
	ShardSize int
	// Classes, given for the pool and train, are the target's: their
	// labels are checked against them as they are listed (planLabels),
	// before the scan embeds anything.
	Classes []string `json:",omitempty"`
}

// PlanResult counts what was planned.
type PlanResult struct {
	Shards int
	Images int
}

// Plan lists a dataset and writes its shard manifests, and for the pool
// its ShardIndex. The listing streams: it holds the shards being written
// and what it reads ahead (dataset.Source.Cut), whatever the dataset's
// size, beside the index's ID per shard. A retry goes on from where the
// attempt before stood (planState).
func (a *Activities) Plan(ctx context.Context, in PlanInput) (PlanResult, error) {
	labels := newPlanLabels(in)
	res, tally, err := a.plan(ctx, in.Run, in.Name, in.Dataset, fmt.Sprintf("pass shards of %d", in.ShardSize), labels, func(it dataset.Item, n int) bool {
		return dataset.EndsShard(it.Key, n, in.ShardSize)
	}, func(firsts []int64) error {
		if in.Name != Pool {
			return nil
		}
		data, _ := json.Marshal(ShardIndex{FirstIDs: firsts})
		return ownWrite(store.WriteAll(ctx, a.Bucket, ShardIndexKey(in.Run, in.Name), data))
	})
	var own *ownWriteError
	var index *dataset.IndexWriteError
	switch {
	case errors.As(err, &own):
		// The worker's bucket refused the run's own files (a policy, a
		// full disk): nothing of the dataset to fix, and retried.
		return res, own.err
	case errors.As(err, &index):
		// Or an archive's index, which planning caches there.
		return res, err
	case err != nil && !retried(ctx, err):
		return res, invalid("data.%s: %v", in.Name, err)
	case err == nil:
		err = labels.check(tally, res.Images)
	}
	return res, err
}

// planLabels checks a plan's labels against the target's classes, where
// a mismatch would otherwise show only after the pool's scan: train's
// must all be classes (its retraining fails on the first that is not),
// and a pool none of whose weak labels is a class (class numbers where
// the target has names, "3.0" for "3") has nothing retraining can take.
// nil checks nothing.
type planLabels struct {
	name    string
	classes dataset.Classes
}

// labelTally is what a plan has seen of its labels, stored with its
// checkpoint, so that a retry going on from there judges the whole.
type labelTally struct {
	Whole    bool          `json:"whole"`     // seen from the listing's first item
	InClass  bool          `json:"in_class"`  // a label that is a class seen
	Off      []string      `json:"off"`       // distinct labels that are no class, the first few
	FirstOff *dataset.Item `json:"first_off"` // the first image whose label is no class
}

func newPlanLabels(in PlanInput) *planLabels {
	if len(in.Classes) == 0 || in.Name != Pool && in.Name != Train {
		return nil
	}
	return &planLabels{name: in.Name, classes: dataset.NewClasses(in.Classes)}
}

// see adds item it to t.
func (l *planLabels) see(t *labelTally, it dataset.Item) {
	if it.ID == 0 { // from the start, again when the manifest changed under the plan
		*t = labelTally{Whole: true}
	}
	if l.classes.Index(it.Label) >= 0 {
		t.InClass = true
		return
	}
	if t.FirstOff == nil {
		t.FirstOff = &it
	}
	if len(t.Off) < MaxSkippedExamples && !slices.Contains(t.Off, it.Label) {
		t.Off = append(t.Off, it.Label) // "" for an image without a label
	}
}

// check is the plan's failure, if its labels (t, of images) make one.
func (l *planLabels) check(t labelTally, images int) error {
	switch {
	case l == nil:
		return nil
	case l.name == Train && t.FirstOff != nil:
		return offClass(Train, *t.FirstOff, l.classes)
	case l.name == Pool && t.Whole && !t.InClass && images > 0:
		shown := make([]string, len(t.Off))
		for i, o := range t.Off {
			shown[i] = strconv.Quote(o)
			if o == "" {
				shown[i] = "no label"
			}
		}
		return invalid("data.pool: none of its %d images has a weak label that is a class of the target (its labels include %s; classes %v)%s: retraining would take none of them, and the scan would embed them all first; label the pool with the target's class names", images, strings.Join(shown, ", "), l.classes, labelHint(t.Off, l.classes))
	}
	return nil
}

// labelHint says what labels that are no class look like, when they look
// like another way of writing the classes: their positions (WebDataset's
// .cls and Hugging Face's label columns hold a class's index), or integers
// written as floats (pandas writes an integer column with a missing value
// as one of floats). "" otherwise.
func labelHint(labels []string, classes dataset.Classes) string {
	if len(labels) == 0 {
		return ""
	}
	labels = slices.DeleteFunc(slices.Clone(labels), func(l string) bool { return l == "" }) // unlabeled images say nothing of the others
	if len(labels) == 0 {
		return ""
	}
	index, float := true, true
	for _, l := range labels {
		n, err := strconv.Atoi(l)
		index = index && err == nil && n >= 0 && n < classes.Len()
		whole, frac, ok := strings.Cut(l, ".")
		_, err = strconv.Atoi(whole)
		float = float && ok && err == nil && strings.Trim(frac, "0") == ""
	}
	switch {
	case index:
		return "; they look like class indices (WebDataset's .cls and Hugging Face's label columns often hold a class's position): write the class names they stand for, or list the classes as their indices (classes: [\"0\", \"1\", …], in the target's order)"
	case float:
		return "; they look like whole numbers written as floats (pandas writes an integer column that has a missing value as floats: 3.0)"
	}
	return ""
}

// ownWriteError is a failed write of the run's own files (its shard
// manifests, the pool's index) in the worker's bucket. It is retried, as
// every write of the worker's own files is: a permission or a full disk
// fixed within timeouts.retry_for lets the pass go on, and status says
// each try's failure meanwhile.
type ownWriteError struct{ err error }

func (e *ownWriteError) Error() string { return e.err.Error() }
func (e *ownWriteError) Unwrap() error { return e.err }

// ownWrite wraps the error of a write as an ownWriteError.
func ownWrite(err error) error {
	if err == nil {
		return nil
	}
	return &ownWriteError{err}
}

// ShardIndex is where each shard of a planned dataset begins: shard i
// holds the items with IDs from FirstIDs[i] up to FirstIDs[i+1].
type ShardIndex struct {
	FirstIDs []int64 `json:"first_ids"`
}

// numbers says whether the index numbers a pool of the given shards and
// images as a plan does: ids from 0, each shard's first after the last's,
// all below the pool's size. shardOf relies on it.
func (x ShardIndex) numbers(shards, images int) bool {
	if len(x.FirstIDs) != shards || shards == 0 || x.FirstIDs[0] != 0 || x.FirstIDs[shards-1] >= int64(images) {
		return false
	}
	for i := 1; i < shards; i++ {
		if x.FirstIDs[i] <= x.FirstIDs[i-1] {
			return false
		}
	}
	return true
}

// shardOf is the shard holding the item with this ID.
func (x ShardIndex) shardOf(id int64) int {
	i, found := slices.BinarySearch(x.FirstIDs, id)
	if !found {
		i--
	}
	return i
}

// plan writes the shard manifests of ds as ShardKey(run, name, i), ending
// a shard after the item for which end, given the shard's length, is true
// (dataset.Source.Cut, how described by cut), then has finish, when set,
// store what it needs of the shards' first IDs; with labels, it returns
// what it saw of the items' labels (over every attempt). It heartbeats on
// a ticker:
// a shard's first item can take longer than the timeout to come (a
// WebDataset's archives read whole the first time, a long folder's
// listing).
//
// It stores how far it got every checkpointEvery, and when it fails in a
// way a retry may get past, and a retry goes on from there: a pool of 10^9
// images listed for hours is not listed again from its start because a
// worker went away, and a listing longer than the activity's timeout gets
// further each attempt instead of starting again (on Azure, where a
// listing cannot begin at a key, the label it stood in is listed again:
// store.ListFolders).
func (a *Activities) plan(ctx context.Context, run, name string, ds schemas.Dataset, cut string, labels *planLabels, end func(it dataset.Item, n int) bool, finish func(firsts []int64) error) (PlanResult, labelTally, error) {
	key := planCheckpointKey(run, name)
	st, err := a.resumePlan(ctx, key, ds, cut)
	if err != nil {
		return PlanResult{}, labelTally{}, err
	}
	defer beating(ctx, func() []any { return []any{st.result()} })()
	stopSaving := every(checkpointEvery, func() { st.save(ctx, a.Bucket, key) })
	defer stopSaving()
	cutFrom := func() (dataset.Progress, error) {
		return a.source().Cut(ctx, ds, st.progress(), func(it dataset.Item, n int) bool {
			if n == 1 {
				st.first(it.ID)
			}
			if labels != nil {
				st.see(labels, it)
			}
			return end(it, n)
		}, func(ctx context.Context, i int, manifest []byte) error {
			return ownWrite(store.WriteAll(ctx, a.Bucket, ShardKey(run, name, i), manifest))
		}, st.written)
	}
	last, err := cutFrom()
	if errors.Is(err, dataset.ErrChanged) {
		activity.GetLogger(ctx).Warn("plan: the manifest changed since the attempt before stored its progress: planning it from the start", "dataset", name)
		st.reset()
		last, err = cutFrom()
	}
	stopSaving()
	finished := false // every shard written
	if err == nil && finish != nil {
		finished, err = true, finish(st.firsts())
	}
	switch {
	case err == nil:
		if err := a.Bucket.Delete(ctx, key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			activity.GetLogger(ctx).Warn("plan: could not remove its progress", "key", key, "error", err)
		}
	case finished || retried(ctx, err): // what was written so far, for the retry
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		st.save(sctx, a.Bucket, key)
		cancel()
	}
	return PlanResult{Shards: last.Shards, Images: int(last.Mark.Next)}, st.labels(), err
}

// checkpointEvery is how often a plan stores how far it got: a worker
// that dies loses about this much of the listing, and a pool of 10^9
// images in shards of 2,000 stores 5 MB of first IDs each time.
var checkpointEvery = 10 * time.Second

// planCheckpoint is how far a plan got, stored beside its shards. A retry
// trusts only its own activity's: a run's ID or a pack's may be used again
// (a pack started again over its output), and a checkpoint may be left
// where a plan failed for good.
type planCheckpoint struct {
	RunID    string           `json:"run_id"` // the workflow run's
	Activity string           `json:"activity"`
	Dataset  schemas.Dataset  `json:"dataset"`
	Cut      string           `json:"cut"` // how its shards end
	Progress dataset.Progress `json:"progress"`
	// FirstIDs is where each shard written begins (ShardIndex).
	FirstIDs []int64 `json:"first_ids"`
	// Labels is what the plan saw of its labels, as far as it went
	// (beyond the shards written, which a retry sees again).
	Labels labelTally `json:"labels"`
}

// planState is a plan under way, which the walk, the writes, the
// heartbeat and the checkpoints share: cp.Progress is the shards written
// without a gap from the first, and cp.FirstIDs holds every shard cut's.
type planState struct {
	mu    sync.Mutex
	cp    planCheckpoint
	saved int // shards in the checkpoint last stored
}

// resumePlan is the state a plan begins in: the checkpoint at key where
// an attempt before this one of the same activity stored it (an attempt
// before heartbeated), else the start.
func (a *Activities) resumePlan(ctx context.Context, key string, ds schemas.Dataset, cut string) (*planState, error) {
	info := activity.GetInfo(ctx)
	// A checkpoint's place in a listing made under other rules of what an
	// item is (a worker upgraded between two attempts) is no place in this
	// one: the rules are part of how the shards are cut.
	cut += fmt.Sprintf(" (listed under rules %d, webdataset %d)", dataset.ListVersion, webdataset.WalkVersion)
	st := &planState{cp: planCheckpoint{RunID: info.WorkflowExecution.RunID, Activity: info.ActivityID, Dataset: ds, Cut: cut}}
	if !activity.HasHeartbeatDetails(ctx) {
		return st, nil
	}
	data, err := store.ReadAll(ctx, a.Bucket, key)
	switch {
	case gcerrors.Code(err) == gcerrors.NotFound:
		return st, nil
	case store.Transient(err):
		return nil, err
	case err != nil:
		activity.GetLogger(ctx).Warn("plan: cannot read the attempt before's progress: planning from the start", "key", key, "error", err)
		return st, nil
	}
	var cp planCheckpoint
	if err := json.Unmarshal(data, &cp); err != nil || cp.RunID != st.cp.RunID || cp.Activity != st.cp.Activity ||
		cp.Dataset != ds || cp.Cut != cut || len(cp.FirstIDs) != cp.Progress.Shards {
		activity.GetLogger(ctx).Warn("plan: the progress stored is not this plan's: planning from the start", "key", key)
		return st, nil
	}
	activity.GetLogger(ctx).Info("plan: going on from the attempt before", "key", key, "shards", cp.Progress.Shards, "images", cp.Progress.Mark.Next)
	st.cp, st.saved = cp, cp.Progress.Shards
	return st, nil
}

func (st *planState) progress() dataset.Progress {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.cp.Progress
}

func (st *planState) result() PlanResult {
	p := st.progress()
	return PlanResult{Shards: p.Shards, Images: int(p.Mark.Next)}
}

// first notes the first ID of the shard being cut.
func (st *planState) first(id int64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.cp.FirstIDs = append(st.cp.FirstIDs, id)
}

// see tallies the label of an item listed.
func (st *planState) see(l *planLabels, it dataset.Item) {
	st.mu.Lock()
	defer st.mu.Unlock()
	l.see(&st.cp.Labels, it)
}

func (st *planState) labels() labelTally {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.cp.Labels
}

func (st *planState) written(p dataset.Progress) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.cp.Progress = p
}

func (st *planState) firsts() []int64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.cp.FirstIDs
}

// reset makes the plan start again from the start.
func (st *planState) reset() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.cp.Progress, st.cp.FirstIDs, st.saved = dataset.Progress{}, nil, 0
}

// save stores the checkpoint at key if shards were written since it last
// did. The first IDs it stores are the written shards'; those appended
// after them, while it encodes, lie beyond what it reads.
func (st *planState) save(ctx context.Context, b *blob.Bucket, key string) {
	st.mu.Lock()
	cp := st.cp
	if cp.Progress.Shards == st.saved {
		st.mu.Unlock()
		return
	}
	cp.FirstIDs = cp.FirstIDs[:cp.Progress.Shards:cp.Progress.Shards]
	st.mu.Unlock()
	data, _ := json.Marshal(cp)
	if err := store.WriteAll(ctx, b, key, data); err != nil {
		activity.GetLogger(ctx).Warn("plan: could not store its progress", "key", key, "error", err)
		return
	}
	st.mu.Lock()
	st.saved = cp.Progress.Shards
	st.mu.Unlock()
}

// retried says whether Temporal should try err's activity again: it was
// cancelled, storage failed in a way that may pass, or the worker's bucket
// refused a write of its own (ownWriteError, dataset.IndexWriteError).
func retried(ctx context.Context, err error) bool {
	var own *ownWriteError
	var index *dataset.IndexWriteError
	return ctx.Err() != nil || store.Transient(err) || errors.As(err, &own) || errors.As(err, &index)
}

// settingUnread says whether err, reading a file that a config names (a
// model, the classes), is the setting's to fix: the file is not there, or
// not to be read by the workers, or the store it names is not to be
// reached (a host name that does not resolve, a certificate). Those fail
// the pass naming the field at once, not after a retry policy's minutes.
// An error the read made itself (a model too large) says so already.
func settingUnread(ctx context.Context, err error) bool {
	var app *temporal.ApplicationError
	return !errors.As(err, &app) && !retried(ctx, err)
}
