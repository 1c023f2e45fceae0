package head

import (
	"encoding/json"
	"fmt"

	"dcd/internal/onnx"
	"dcd/internal/preprocess"
)

// NewExportNames names an export's tensors: the target's features and
// logits outputs, and probabilities for the softmax. The head's logits
// keep the target's name unless probabilities or the features (a config
// may read both from one output) is that name.
func NewExportNames(features, logits, probabilities string, classes []string) ExportNames {
	if logits == "" || logits == probabilities || logits == features {
		logits = "dcd_logits"
	}
	return ExportNames{Features: features, Logits: logits, Probabilities: probabilities, Classes: classes}
}

// ExportNames are the tensor names an exported model uses.
type ExportNames struct {
	// Features is the backbone's output the head reads (a graph output or
	// any node's output of the target model). It stays a graph output.
	Features string
	// Logits and Probabilities name the head's outputs; the target's old
	// head is dropped, so its output name may be reused.
	Logits        string
	Probabilities string
	// Classes name the head's classes in output order. They are the
	// exported model's metadata ("classes", a JSON list), in place of the
	// target's, which describe the head it drops.
	Classes []string
	// Input and Preprocess are the model's image input and how the pass
	// made it from an image, also in the metadata ("input", and
	// "preprocess": the spec as JSON, defaults applied), so that whoever
	// deploys the model feeds it what it was trained on. Preprocess's
	// zero value (an export for a test) leaves both out.
	Input      string
	Preprocess preprocess.Spec
}

// ONNX returns the target model with h in place of its head: image →
// features → logits (standardise, W, b) → probabilities (softmax), one file
// that ONNX Runtime runs image → class. Its outputs are Features, Logits and
// Probabilities, in that order.
func (h *Head) ONNX(target []byte, names ExportNames) ([]byte, error) {
	if names.Features == "" || names.Logits == "" || names.Probabilities == "" {
		return nil, fmt.Errorf("head: export: every name must be set, got %+v", names)
	}
	if names.Features == names.Logits || names.Features == names.Probabilities || names.Logits == names.Probabilities {
		// ONNX Runtime refuses a model that defines a name twice: it
		// would be written, and fail only where it is deployed.
		return nil, fmt.Errorf("head: export: features, logits and probabilities need three names, got %+v", names)
	}
	wt := make([]float32, h.Dim*h.Classes)
	for c := range h.Classes {
		for j := range h.Dim {
			wt[j*h.Classes+c] = h.W[c*h.Dim+j]
		}
	}
	p := "dcd_head_"
	g := &onnx.Graph{
		Initializers: []onnx.Tensor{
			{Name: p + "mean", Dims: []int64{int64(h.Dim)}, Floats: h.Mean},
			{Name: p + "std", Dims: []int64{int64(h.Dim)}, Floats: h.Std},
			{Name: p + "wt", Dims: []int64{int64(h.Dim), int64(h.Classes)}, Floats: wt},
			{Name: p + "b", Dims: []int64{int64(h.Classes)}, Floats: h.B},
		},
		Nodes: []onnx.Node{
			// Flatten makes [N, d, 1, 1] backbones work as [N, d] ones.
			{Op: "Flatten", Inputs: []string{names.Features}, Outputs: []string{p + "flat"}, Attrs: map[string]any{"axis": 1}},
			{Op: "Sub", Inputs: []string{p + "flat", p + "mean"}, Outputs: []string{p + "centered"}},
			{Op: "Div", Inputs: []string{p + "centered", p + "std"}, Outputs: []string{p + "z"}},
			{Op: "MatMul", Inputs: []string{p + "z", p + "wt"}, Outputs: []string{p + "scores"}},
			{Op: "Add", Inputs: []string{p + "scores", p + "b"}, Outputs: []string{names.Logits}},
			{Op: "Softmax", Inputs: []string{names.Logits}, Outputs: []string{names.Probabilities}, Attrs: map[string]any{"axis": 1}},
		},
		Outputs: []onnx.Value{
			{Name: names.Logits, Elem: onnx.Float, Shape: []int64{-1, int64(h.Classes)}},
			{Name: names.Probabilities, Elem: onnx.Float, Shape: []int64{-1, int64(h.Classes)}},
		},
	}
	if names.Classes != nil {
		if len(names.Classes) != h.Classes {
			return nil, fmt.Errorf("head: export: %d class names for a head of %d classes", len(names.Classes), h.Classes)
		}
		classes, _ := json.Marshal(names.Classes)
		g.Metadata = map[string]string{"classes": string(classes), "outputs": names.Logits + "," + names.Probabilities}
	}
	if names.Preprocess.Height != 0 {
		if g.Metadata == nil {
			g.Metadata = map[string]string{}
		}
		spec, _ := json.Marshal(names.Preprocess.WithDefaults())
		g.Metadata["preprocess"] = string(spec)
		if names.Input != "" {
			g.Metadata["input"] = names.Input
		}
	}
	out, err := onnx.Append(target, []string{names.Features}, g)
	if err != nil {
		return nil, fmt.Errorf("head: export: %w", err)
	}
	return out, nil
}
