// Package ortrun runs ONNX models with ONNX Runtime through
// github.com/yalue/onnxruntime_go, hiding its C-backed tensors behind Go
// slices.
//
// One ORT environment exists per process (Init). A Session is safe for
// concurrent use: runs go on at once (ONNX Runtime allows it), each over
// the session's intra-op threads, so a worker running several batches at
// once gives each session fewer threads (activities.DefaultThreads).
package ortrun

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	ort "github.com/yalue/onnxruntime_go"

	"dcd/internal/toolcache"
)

var env struct {
	sync.Mutex
	path string
	err  error
}

// Init loads the ONNX Runtime shared library at libPath and creates the
// process-wide environment. Later calls with the same path are no-ops.
func Init(libPath string) error {
	env.Lock()
	defer env.Unlock()
	if env.path != "" {
		if libPath != env.path {
			return fmt.Errorf("ortrun: onnx runtime already loaded from %s, not %s", env.path, libPath)
		}
		return env.err
	}
	env.path = libPath
	ort.SetSharedLibraryPath(libPath)
	if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
		env.err = fmt.Errorf("ortrun: load onnx runtime %s: %w", libPath, err)
	}
	return env.err
}

// Providers are the execution providers a session takes, by Options.EP.
var Providers = []string{"cpu", "cuda"}

// CheckEP refuses an execution provider no session would take, for a
// command to reject it before it starts any work.
func CheckEP(ep string) error {
	if !slices.Contains(Providers, ep) {
		return fmt.Errorf("execution provider %q: want one of %s", ep, strings.Join(Providers, ", "))
	}
	return nil
}

// Options tunes a session.
type Options struct {
	// Threads is ORT's intra-op thread count; 0 lets ORT choose.
	Threads int
	// EP is the execution provider: "cpu" (default) or "cuda" (Providers).
	EP string
	// Spin lets idle intra-op threads spin-wait for the next operator
	// (ORT's own default). Off, they sleep: a run may start a few µs later,
	// but the cores are free for the Go code around it (decoding images,
	// selecting neighbours), which spinning threads would starve.
	Spin bool
	// NoTF32 keeps CUDA's matrix products in float32 (the CUDA provider
	// rounds their inputs to TF32's 10-bit mantissa by default, as fine
	// for a backbone's activations as it is not for distances that rank
	// neighbours). The CPU never rounds them.
	NoTF32 bool
}

// Session is one model ready to run.
type Session struct {
	name    string
	inputs  []string
	outputs []string
	// mu lets runs go on at once (ONNX Runtime allows concurrent runs of
	// a session) and holds Close until they end.
	mu   sync.RWMutex
	sess *ort.DynamicAdvancedSession
}

// IO describes a model's graph inputs and outputs, as read from the model.
type IO = ort.InputOutputInfo

// Describe lists a model's inputs and outputs with their shapes (-1 for a
// symbolic dimension).
func Describe(model []byte) (inputs, outputs []IO, err error) {
	inputs, outputs, err = ort.GetInputOutputInfoWithONNXData(model)
	if err != nil {
		return nil, nil, fmt.Errorf("ortrun: read model: %w", err)
	}
	return inputs, outputs, nil
}

// IsFloat32 reports whether io is a tensor of float32 values.
func IsFloat32(io IO) bool {
	return io.OrtValueType == ort.ONNXTypeTensor && io.DataType == ort.TensorElementDataTypeFloat
}

// NewSession creates a session over the model bytes; name identifies the
// model in errors.
func NewSession(name string, model []byte, inputs, outputs []string, opt Options) (*Session, error) {
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("ortrun: %s: session options: %w", name, err)
	}
	defer so.Destroy()
	if opt.Threads > 0 {
		if err := so.SetIntraOpNumThreads(opt.Threads); err != nil {
			return nil, fmt.Errorf("ortrun: %s: threads: %w", name, err)
		}
		if err := so.SetInterOpNumThreads(1); err != nil {
			return nil, fmt.Errorf("ortrun: %s: threads: %w", name, err)
		}
	}
	if !opt.Spin {
		if err := so.AddSessionConfigEntry("session.intra_op.allow_spinning", "0"); err != nil {
			return nil, fmt.Errorf("ortrun: %s: spinning: %w", name, err)
		}
	}
	switch opt.EP {
	case "", "cpu":
	case "cuda":
		need := cudaNeeds()
		cuda, err := ort.NewCUDAProviderOptions()
		if err != nil {
			return nil, fmt.Errorf("ortrun: %s: cuda execution provider: %w (%s)", name, err, need)
		}
		defer cuda.Destroy()
		if opt.NoTF32 {
			if err := cuda.Update(map[string]string{"use_tf32": "0"}); err != nil {
				return nil, fmt.Errorf("ortrun: %s: cuda execution provider: use_tf32: %w (%s)", name, err, need)
			}
		}
		if err := so.AppendExecutionProviderCUDA(cuda); err != nil {
			return nil, fmt.Errorf("ortrun: %s: cuda execution provider: %w (%s)", name, err, need)
		}
	default:
		return nil, fmt.Errorf("ortrun: %s: unknown execution provider %q (want cpu or cuda)", name, opt.EP)
	}
	sess, err := ort.NewDynamicAdvancedSessionWithONNXData(model, inputs, outputs, so)
	if err != nil {
		return nil, fmt.Errorf("ortrun: %s: create session (inputs %q, outputs %q): %w", name, inputs, outputs, err)
	}
	return &Session{name: name, inputs: inputs, outputs: outputs, sess: sess}, nil
}

// CUDAProviders are the libraries of ONNX Runtime's GPU build that the CUDA
// execution provider loads from the folder of libonnxruntime.so.
var CUDAProviders = []string{"libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"}

// cudaNeeds says what the CUDA execution provider needs, naming the
// provider libraries missing beside the loaded ONNX Runtime library.
func cudaNeeds() string {
	env.Lock()
	dir := filepath.Dir(env.path)
	env.Unlock()
	var missing []string
	for _, f := range CUDAProviders {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			missing = append(missing, f)
		}
	}
	have := "it has " + strings.Join(CUDAProviders, " and ")
	if len(missing) > 0 {
		have = "missing " + strings.Join(missing, " and ")
	}
	return fmt.Sprintf("needs the GPU build of ONNX Runtime: %s beside libonnxruntime.so in %s (%s), with the CUDA major version that build links (ldd libonnxruntime_providers_cuda.so names it) and cuDNN 9 on the library path", strings.Join(CUDAProviders, " and "), dir, have)
}

// Close waits for a run in flight, then releases the session; later runs
// fail instead of touching freed memory.
func (s *Session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sess == nil {
		return nil
	}
	err := s.sess.Destroy()
	s.sess = nil
	return err
}

var errClosed = errors.New("session closed")

// Tensor is a dense tensor of float32 or int64 values (one of the two).
type Tensor struct {
	Shape  []int64
	Floats []float32
	Ints   []int64
}

// value wraps t's memory (Ints, else Floats) as an ORT tensor, without a
// copy.
func (t Tensor) value() (ort.Value, error) {
	// A failed NewTensor's nil *Tensor would be a non-nil Value, which
	// destroyAll would call Destroy on: nil, untyped, instead.
	if t.Ints != nil {
		v, err := ort.NewTensor(ort.NewShape(t.Shape...), t.Ints)
		if err != nil {
			return nil, err
		}
		return v, nil
	}
	v, err := ort.NewTensor(ort.NewShape(t.Shape...), t.Floats)
	if err != nil {
		return nil, err
	}
	return v, nil
}

// Run feeds one tensor per input, in the session's input order, and returns
// one per output. Output data is copied out of ORT's memory, once.
func (s *Session) Run(in ...Tensor) ([]Tensor, error) {
	if len(in) != len(s.inputs) {
		return nil, fmt.Errorf("ortrun: %s: %d inputs given, model takes %d", s.name, len(in), len(s.inputs))
	}
	values := make([]ort.Value, len(in))
	defer destroyAll(values)
	for i, t := range in {
		var err error
		if values[i], err = t.value(); err != nil {
			return nil, fmt.Errorf("ortrun: %s: input %q shape %v: %w", s.name, s.inputs[i], t.Shape, err)
		}
	}
	outs := make([]ort.Value, len(s.outputs))
	defer destroyAll(outs)
	s.mu.RLock()
	err := errClosed
	if s.sess != nil {
		err = s.sess.Run(values, outs)
	}
	s.mu.RUnlock()
	if err != nil {
		return nil, fmt.Errorf("ortrun: %s: run: %w", s.name, err)
	}
	// onnxruntime_go has already copied each output into a Go slice that
	// its ORT value only borrows, so the slices outlive the values' Destroy.
	res := make([]Tensor, len(outs))
	for i, v := range outs {
		switch t := v.(type) {
		case *ort.Tensor[float32]:
			res[i] = Tensor{Shape: t.GetShape(), Floats: t.GetData()}
		case *ort.Tensor[int64]:
			res[i] = Tensor{Shape: t.GetShape(), Ints: t.GetData()}
		default:
			return nil, fmt.Errorf("ortrun: %s: output %q is %T, want a float32 or int64 tensor", s.name, s.outputs[i], v)
		}
	}
	return res, nil
}

// RunInto is Run with the outputs' memory given: out[i] holds a shape and a
// slice (Floats or Ints) of that many elements, which ORT fills in place, so
// large outputs are not copied. Every output's shape must be known before
// the run.
func (s *Session) RunInto(in []Tensor, out []Tensor) error {
	if len(in) != len(s.inputs) || len(out) != len(s.outputs) {
		return fmt.Errorf("ortrun: %s: %d inputs and %d outputs given, model takes %d and %d", s.name, len(in), len(out), len(s.inputs), len(s.outputs))
	}
	values := make([]ort.Value, len(in)+len(out))
	defer destroyAll(values)
	for i, t := range append(in[:len(in):len(in)], out...) {
		var err error
		if values[i], err = t.value(); err != nil {
			return fmt.Errorf("ortrun: %s: tensor %d shape %v: %w", s.name, i, t.Shape, err)
		}
	}
	s.mu.RLock()
	err := errClosed
	if s.sess != nil {
		err = s.sess.Run(values[:len(in)], values[len(in):])
	}
	s.mu.RUnlock()
	if err != nil {
		return fmt.Errorf("ortrun: %s: run: %w", s.name, err)
	}
	return nil
}

func destroyAll(vs []ort.Value) {
	for _, v := range vs {
		if v != nil {
			v.Destroy()
		}
	}
}

// DefaultLibrary is where `make setup` puts the CPU ONNX Runtime library.
// The DCD_ORT_LIB environment variable overrides it.
func DefaultLibrary() string {
	if p := os.Getenv("DCD_ORT_LIB"); p != "" {
		return p
	}
	return SetupLibrary()
}

// SetupLibrary is where `make setup` puts the CPU ONNX Runtime library,
// whatever DCD_ORT_LIB says.
func SetupLibrary() string {
	return toolcache.Path("lib", "libonnxruntime.so."+LibraryVersion)
}

// LibraryVersion is the ONNX Runtime release the setup script installs.
const LibraryVersion = "1.30.0"
