package activities

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/onnx"
	"dcd/internal/ortrun"
	"dcd/internal/preprocess"
	"dcd/internal/store"
	"dcd/internal/webdataset"
	"dcd/schemas"
)

// The searches' budget: a hold waits while the bytes are held, a release
// called twice gives them back once, and a hold larger than the budget
// takes all of it rather than waiting forever.
func TestHoldBoundsSearchBytes(t *testing.T) {
	s := NewSessions(ortrun.Options{}, ortrun.Options{})
	ctx := context.Background()
	first, err := s.hold(ctx, searchBytes/2+1)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan func(), 1)
	go func() {
		r, err := s.hold(ctx, searchBytes/2+1)
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	select {
	case <-got:
		t.Fatal("a second hold went through while the first held more than half the budget")
	case <-time.After(50 * time.Millisecond):
	}
	first()
	first() // once only
	second := <-got
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := s.hold(short, searchBytes/2); err == nil {
		t.Fatal("a release called twice gave its bytes back twice")
	}
	second()
	all, err := s.hold(ctx, 4*searchBytes)
	if err != nil {
		t.Fatal(err)
	}
	all()
}

// sessionActivities are activities over a mem:// bucket with sessions of
// a thread each.
func sessionActivities(t *testing.T) *Activities {
	t.Helper()
	if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
		t.Fatalf("%v (run `make setup`)", err)
	}
	a := memActivities(t)
	a.Sessions = NewSessions(ortrun.Options{Threads: 1}, ortrun.Options{Threads: 1})
	t.Cleanup(a.Sessions.Close)
	return a
}

// flattenModel writes a model flattening 1×2×2 images, of its own digest
// by name, at models/<name>.onnx, and checks it as a target.
func flattenModel(t *testing.T, a *Activities, name string) ModelRef {
	t.Helper()
	ctx := context.Background()
	model, err := (&onnx.Graph{
		Name:    name,
		Inputs:  []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{-1, 1, 2, 2}}},
		Outputs: []onnx.Value{{Name: "features", Elem: onnx.Float, Shape: []int64{-1, 4}}},
		Nodes:   []onnx.Node{{Op: "Flatten", Inputs: []string{"image"}, Outputs: []string{"features"}, Attrs: map[string]any{"axis": 1}}},
	}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := "models/" + name + ".onnx"
	if err := a.Bucket.WriteAll(ctx, path, model, nil); err != nil {
		t.Fatal(err)
	}
	m, err := a.checkModel(ctx, modelField{name: "target"}, schemas.Model{Path: path, Input: "image", Features: "features",
		Preprocess: preprocess.Spec{Channels: 1, Height: 2, Width: 2}}, []string{"features"}, []string{"features"})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Activities that start together on a model load it once: the others wait
// for that load rather than each holding the model (and with -ep cuda its
// weights on the GPU) at once; one cancelled while waiting leaves the load
// to the rest.
func TestSessionLoadsOnce(t *testing.T) {
	a := sessionActivities(t)
	ctx := context.Background()
	m := flattenModel(t, a, "flatten")

	var loads atomic.Int32
	release := make(chan struct{})
	testHookLoadSession = func(ctx context.Context) {
		loads.Add(1)
		<-release
		if ctx.Err() != nil {
			t.Error("the load was cancelled with the activity that began it")
		}
	}
	defer func() { testHookLoadSession = func(context.Context) {} }()
	var waiting atomic.Int32
	testHookSharedWait = func() { waiting.Add(1) }
	defer func() { testHookSharedWait = func() {} }()
	// The first activity starts the load and is cancelled while the
	// other seven wait on it: theirs goes on.
	first, cancelFirst := context.WithCancel(ctx)
	firstDone := make(chan error, 1)
	go func() {
		_, _, err := a.session(first, m)
		firstDone <- err
	}()
	for loads.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	got := make(chan *ortrun.Session, 7)
	for range 7 {
		go func() {
			s, release, err := a.session(ctx, m)
			if err != nil {
				t.Error(err)
			} else {
				release()
			}
			got <- s
		}()
	}
	for deadline := time.Now().Add(10 * time.Second); waiting.Load() < 8; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) { // (a sleep would let a loaded machine's late ones find the session made)
			t.Fatalf("%d activities wait on the load, want 8", waiting.Load())
		}
	}
	cancelFirst()
	if err := <-firstDone; err == nil {
		t.Error("a session cancelled while loading returned no error")
	}
	close(release)
	var s *ortrun.Session
	for range 7 {
		if g := <-got; s == nil {
			s = g
		} else if g != s {
			t.Error("two sessions of one model")
		}
	}
	if n := loads.Load(); n != 1 {
		t.Errorf("%d loads of one model by eight activities at once, want 1", n)
	}
}

// A worker keeps maxSessions sessions: a further model's load closes the
// least recently used one no activity holds, never one in use.
func TestSessionsBounded(t *testing.T) {
	a := sessionActivities(t)
	ctx := context.Background()
	refs := make([]ModelRef, maxSessions+2)
	for i := range refs {
		refs[i] = flattenModel(t, a, fmt.Sprintf("flatten-%d", i)) // a model of its own digest
	}
	// The first is held throughout; the others are released at once.
	held, release, err := a.session(ctx, refs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	for _, m := range refs[1:] {
		_, r, err := a.session(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		r()
	}
	if n := len(a.Sessions.sessions); n != maxSessions {
		t.Errorf("%d sessions open, want %d", n, maxSessions)
	}
	if _, err := held.Run(ortrun.Tensor{Shape: []int64{1, 1, 2, 2}, Floats: []float32{1, 2, 3, 4}}); err != nil {
		t.Errorf("the session held throughout was closed: %v", err)
	}
	if _, ok := a.Sessions.sessions[refs[1].Spec.Digest()+"/"]; ok {
		t.Error("the least recently used idle session is still open")
	}
}

// A load others wait on outlives the cancelling of the activity that
// began it, but not that activity's deadline.
func TestDetached(t *testing.T) {
	parent, cancel := context.WithTimeout(context.Background(), time.Hour)
	d, stop := detached(parent)
	defer stop()
	cancel()
	if d.Err() != nil {
		t.Errorf("detached from a cancelled activity: %v", d.Err())
	}
	want, _ := parent.Deadline()
	if got, ok := d.Deadline(); !ok || !got.Equal(want) {
		t.Errorf("deadline %v (%v), want the activity's %v", got, ok, want)
	}
}

// A model that does not load beside the sessions kept for later (a GPU's
// memory, full of idle models' weights) loads once they are closed; one
// that fails otherwise leaves them be.
func TestSessionLoadClosesIdleOnFailure(t *testing.T) {
	a := sessionActivities(t)
	ctx := context.Background()
	kept, fits, bad := flattenModel(t, a, "kept"), flattenModel(t, a, "fits"), flattenModel(t, a, "bad")
	_, release, err := a.session(ctx, kept)
	if err != nil {
		t.Fatal(err)
	}
	release()
	defer func(f func(string, []byte, []string, []string, ortrun.Options) (*ortrun.Session, error)) {
		newSession = f
	}(newSession)
	real := newSession
	newSession = func(name string, model []byte, in, out []string, opt ortrun.Options) (*ortrun.Session, error) {
		a.Sessions.mu.Lock()
		n := len(a.Sessions.sessions)
		a.Sessions.mu.Unlock()
		if n > 0 {
			return nil, fmt.Errorf("ortrun: %s: create session: %w", name, errors.New("Failed to allocate memory for requested buffer of size 4096"))
		}
		return real(name, model, in, out, opt)
	}
	_, release, err = a.session(ctx, fits)
	if err != nil {
		t.Fatalf("a model that fits once the idle session is closed: %v", err)
	}
	release()

	newSession = func(string, []byte, []string, []string, ortrun.Options) (*ortrun.Session, error) {
		// Its path and tensors' names hold "oom" and "alloc": not ONNX
		// Runtime's words for memory.
		return nil, fmt.Errorf(`ortrun: models/bedroom.onnx: create session (inputs ["zoom"], outputs ["realloc"]): %w`, errors.New("Load model from bytes failed: Protobuf parsing failed"))
	}
	if _, _, err := a.session(ctx, bad); err == nil {
		t.Fatal("a model that does not load: no error")
	}
	if _, release, ok := a.Sessions.take(fits.Spec.Digest() + "/" + fits.EP); !ok {
		t.Error("a failed load of another model closed the idle session")
	} else {
		release()
	}
}

// A ticker's stop may be called twice: deferred, for a panic that Temporal
// recovers, and where the work ends. Once stopped, it calls no more.
func TestEveryStopsOnce(t *testing.T) {
	var calls atomic.Int32
	stop := every(time.Millisecond, func() { calls.Add(1) })
	time.Sleep(10 * time.Millisecond)
	stop()
	stop()
	n := calls.Load()
	time.Sleep(10 * time.Millisecond)
	if calls.Load() != n {
		t.Errorf("called %d times after its stop", calls.Load()-n)
	}
}

// An archive's member too large to share a span is read alone and held
// until decoded: it reserves its size as a whole object's read does, so
// an embedding's readers stay within their budget on packed large images.
func TestPackedReadReservesLargeMembers(t *testing.T) {
	a := memActivities(t)
	ctx := context.Background()
	var tarball bytes.Buffer
	w := webdataset.NewWriter(&tarball)
	for i, size := range []int{100, 3 << 20} {
		if err := w.Write(fmt.Sprintf("s%d", i), "png", make([]byte, size), "a", ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Bucket.WriteAll(ctx, "pool/0.tar", tarball.Bytes(), nil); err != nil {
		t.Fatal(err)
	}
	var images []embed.Image
	if err := webdataset.Walk(bytes.NewReader(tarball.Bytes()), "pool/0.tar", func(s webdataset.Sample) error {
		images = append(images, embed.Image{URI: s.Image.Key()})
		return nil
	}); err != nil || len(images) != 2 {
		t.Fatalf("%d images, %v", len(images), err)
	}
	read := a.packedRead(images)
	for i, want := range []int64{0, 3 << 20} {
		var reserved int64
		rctx := store.WithReserve(ctx, func(_ context.Context, n int64) error { reserved += n; return nil })
		data, err := read(rctx, images[i].URI)
		if err != nil || reserved != want {
			t.Errorf("member of %d bytes: reserved %d (%v), want %d", len(data), reserved, err, want)
		}
	}
}

// A ticker for work that reports its progress calls until the work first
// moves, however long that takes; then stops calling once it has not
// moved for its bound or three times its slowest step, and calls again
// when it moves.
func TestWhileMovingStopsOnAStall(t *testing.T) {
	var calls atomic.Int32
	stop, moved := whileMoving(time.Millisecond, 50*time.Millisecond, func() { calls.Add(1) })
	defer stop()
	time.Sleep(120 * time.Millisecond) // a first step longer than the bound
	n := calls.Load()
	if n < 10 { // (one a ms on a quiet machine)
		t.Fatalf("%d calls before the first move, want them to go on", n)
	}
	moved() // its slowest step now 120 ms: beats for 360 ms more
	time.Sleep(200 * time.Millisecond)
	if calls.Load()-n < 10 {
		t.Errorf("%d calls in the 200 ms after a first step of 120 ms, want them to go on", calls.Load()-n)
	}
	time.Sleep(250 * time.Millisecond) // past three times the slowest step: a stall
	n = calls.Load()
	time.Sleep(50 * time.Millisecond)
	if calls.Load() != n {
		t.Errorf("%d calls past three times the slowest step, want none", calls.Load()-n)
	}
	moved()
	time.Sleep(20 * time.Millisecond)
	if calls.Load() == n {
		t.Error("no call after the work moved again")
	}
}

// A trainer's model that fails its check is named as the trainer's, and
// the fields it was checked against as the config's: it is no config
// field of its own (there is no retrain.trainer.output.path).
func TestTrainerModelChecksNameTheTrainer(t *testing.T) {
	a := sessionActivities(t)
	ctx := context.Background()
	flattenModel(t, a, "flatten")
	trainer := modelField{trainer: true}
	put(t, a, "runs/r/methods/dcd/model.onnx", []byte("not a model"))
	for _, c := range []struct {
		model  schemas.Model
		output string
		want   string
	}{
		{schemas.Model{Path: "runs/r/methods/dcd/model.onnx"}, "logits",
			`config: retrain.trainer (the model it wrote): "runs/r/methods/dcd/model.onnx" is not an ONNX model`},
		{schemas.Model{Path: "models/flatten.onnx", Input: "image", Preprocess: preprocess.Spec{Channels: 1, Height: 2, Width: 2}}, "logits",
			`config: retrain.trainer.output: model "models/flatten.onnx" has no tensor "logits"`},
		{schemas.Model{Path: "models/flatten.onnx", Input: "pixels"}, "features",
			`config: target.input (the trainer's model is fed as the target is): model "models/flatten.onnx" has no input "pixels"`},
		{schemas.Model{Path: "models/flatten.onnx", Input: "image", Preprocess: preprocess.Spec{Channels: 1, Height: 3, Width: 2}}, "features",
			`config: target.preprocess.height (the trainer's model is fed as the target is) is 3, but model "models/flatten.onnx"`},
	} {
		c.model.Features = c.output
		_, err := a.checkModel(ctx, trainer, c.model, []string{c.output}, []string{"logits"})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.model, err, c.want)
		}
	}
}

// A value too large for float16 features is named by the model's tensor,
// as the config gives it, not by DCD's column for it.
func TestFloat16OverflowNamesTheTensor(t *testing.T) {
	m := ModelRef{Path: "models/sim.onnx", Spec: features.Spec{StoredAs: schemas.Float16, Outputs: []string{"embedding"}, Columns: []string{"features"}}}
	err := m.checkStorable(embed.Batch{Images: []embed.Image{{URI: "a.png"}, {URI: "b.png"}}, Vectors: [][]float32{{1, 2, 70000, 3}}, Dims: []int{2}})
	if err == nil || !strings.Contains(err.Error(), `output "embedding" is 70000 for image b.png`) {
		t.Errorf("a value past float16: %v, want the tensor and image named", err)
	}
}
