package onnx

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

func fv(name string, shape ...int64) Value { return Value{Name: name, Elem: Float, Shape: shape} }

// newHead is a head reading "features": logits = features·w.
func newHead(nodes ...Node) *Graph {
	return &Graph{
		Initializers: []Tensor{{Name: "new_w", Dims: []int64{4, 2}, Floats: make([]float32, 8)}},
		Nodes:        append([]Node{{Op: "MatMul", Inputs: []string{"features", "new_w"}, Outputs: []string{"logits"}}}, nodes...),
		Outputs:      []Value{fv("logits", -1, 2)},
	}
}

// appendedOutputs is keptOutputs of g with newHead appended at "features".
func appendedOutputs(t *testing.T, g *Graph) []string {
	t.Helper()
	model, err := g.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	out, err := Append(model, []string{"features"}, newHead())
	if err != nil {
		t.Fatal(err)
	}
	return keptOutputs(t, out)
}

// keptOutputs are the outputs of the nodes an appended model kept.
func keptOutputs(t *testing.T, model []byte) []string {
	t.Helper()
	m, err := parseModel(model)
	if err != nil {
		t.Fatal(err)
	}
	var outs []string
	for _, n := range m.nodes {
		outs = append(outs, n.outputs...)
	}
	return outs
}

// A model of IR 3, whose initializers are its inputs too (PyTorch's
// keep_initializers_as_inputs): the export drops the old head's weights
// and every initializer's input, and is IR 4.
func TestAppendIR3(t *testing.T) {
	g := &Graph{
		Name:         "ir3",
		Inputs:       []Value{fv("x", -1, 4)},
		Outputs:      []Value{fv("old_logits", -1, 3)},
		Initializers: []Tensor{{Name: "bias", Dims: []int64{4}, Floats: make([]float32, 4)}, {Name: "old_w", Dims: []int64{4, 3}, Floats: make([]float32, 12)}},
		Nodes: []Node{
			{Op: "Add", Inputs: []string{"x", "bias"}, Outputs: []string{"features"}},
			{Op: "MatMul", Inputs: []string{"features", "old_w"}, Outputs: []string{"old_logits"}},
		},
	}
	b, err := g.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// IR 3, with every initializer an input too.
	m, err := parseModel(b)
	if err != nil {
		t.Fatal(err)
	}
	var model []byte
	for _, f := range m.fields {
		switch f.num {
		case 1:
			model = protowire.AppendTag(model, 1, protowire.VarintType)
			model = protowire.AppendVarint(model, 3)
		case 7:
			graph, _ := g.graphProto()
			for _, t := range g.Initializers {
				graph = appendMessage(graph, 11, marshalValue(fv(t.Name, t.Dims...)))
			}
			model = appendMessage(model, 7, graph)
		default:
			model = append(model, f.raw...)
		}
	}
	out, err := Append(model, []string{"features"}, newHead())
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseModel(out)
	if err != nil {
		t.Fatal(err)
	}
	var inputs, inits []string
	for _, in := range got.inputs {
		inputs = append(inputs, in.name)
	}
	for _, in := range got.inits {
		inits = append(inits, in.name)
	}
	if got.ir != 4 || !slices.Equal(inputs, []string{"x"}) || !slices.Equal(inits, []string{"bias", "new_w"}) {
		t.Errorf("IR %d, inputs %q, initializers %q; want IR 4, x, and bias and new_w", got.ir, inputs, inits)
	}
}

// An optional input left out ("") is no tensor: it keeps no node whose
// optional output is left out too.
func TestAppendEmptyNamesKeepNothing(t *testing.T) {
	g := &Graph{
		Inputs:  []Value{fv("x", -1, 4)},
		Outputs: []Value{fv("features", -1, 4), fv("logits", -1, 2), fv("aux", -1, 4)},
		Initializers: []Tensor{
			{Name: "old_w", Dims: []int64{4, 2}, Floats: make([]float32, 8)},
			{Name: "top", Dims: []int64{}, Floats: []float32{2}},
			{Name: "dead_w", Dims: []int64{4}, Floats: []float32{1, 2, 3, 4}},
		},
		Nodes: []Node{
			{Op: "Mul", Inputs: []string{"x", "dead_w"}, Outputs: []string{"pre_aux"}},
			{Op: "Dropout", Inputs: []string{"pre_aux"}, Outputs: []string{"aux", ""}},
			{Op: "Clip", Inputs: []string{"x", "", "top"}, Outputs: []string{"features"}},
			{Op: "MatMul", Inputs: []string{"features", "old_w"}, Outputs: []string{"logits"}},
		},
	}
	if outs := appendedOutputs(t, g); slices.Contains(outs, "aux") || slices.Contains(outs, "pre_aux") {
		t.Errorf("kept %q: the Dropout and its Mul feed no output", outs)
	}
}

// A head whose own subgraph reads a tensor of the model keeps the node
// that computes it.
func TestAppendHeadWithSubgraph(t *testing.T) {
	g := &Graph{
		Inputs:       []Value{fv("x", -1, 4)},
		Outputs:      []Value{fv("features", -1, 4), fv("logits", -1, 2)},
		Initializers: []Tensor{{Name: "old_w", Dims: []int64{4, 2}, Floats: make([]float32, 8)}},
		Nodes: []Node{
			{Op: "Relu", Inputs: []string{"x"}, Outputs: []string{"features"}},
			{Op: "Neg", Inputs: []string{"x"}, Outputs: []string{"aux"}},
			{Op: "MatMul", Inputs: []string{"features", "old_w"}, Outputs: []string{"logits"}},
		},
	}
	model, err := g.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	branch := func(in string) *Graph {
		return &Graph{Nodes: []Node{{Op: "Identity", Inputs: []string{in}, Outputs: []string{"b_" + in}}}, Outputs: []Value{fv("b_"+in, -1, 4)}}
	}
	head := newHead(Node{Op: "If", Inputs: []string{"cond"}, Outputs: []string{"chosen"},
		Attrs: map[string]any{"then_branch": branch("aux"), "else_branch": branch("features")}})
	head.Initializers = append(head.Initializers, Tensor{Name: "cond", Dims: []int64{}, Ints: []int64{1}})
	out, err := Append(model, []string{"features"}, head)
	if err != nil {
		t.Fatal(err)
	}
	if outs := keptOutputs(t, out); !slices.Contains(outs, "aux") {
		t.Errorf("kept %q: the head's branch reads aux", outs)
	}
}

// Subgraphs nested deeper than protobuf allows are refused, not followed
// down the stack; a few levels are followed to what the innermost read.
func TestAppendSubgraphDepth(t *testing.T) {
	nested := func(depth int) []byte {
		leaf := func(out string) *Graph {
			return &Graph{Nodes: []Node{{Op: "Identity", Inputs: []string{"x"}, Outputs: []string{out}}}, Outputs: []Value{fv(out, -1, 4)}}
		}
		inner := leaf("y")
		for i := range depth {
			out := fmt.Sprintf("y%d", i)
			inner = &Graph{
				Nodes:   []Node{{Op: "If", Inputs: []string{"cond"}, Outputs: []string{out}, Attrs: map[string]any{"then_branch": inner, "else_branch": leaf("e" + out)}}},
				Outputs: []Value{fv(out, -1, 4)},
			}
		}
		g := &Graph{
			Inputs:       []Value{fv("x", -1, 4)},
			Outputs:      []Value{fv("features", -1, 4)},
			Initializers: []Tensor{{Name: "cond", Dims: []int64{}, Ints: []int64{1}}},
			Nodes:        []Node{{Op: "If", Inputs: []string{"cond"}, Outputs: []string{"features"}, Attrs: map[string]any{"then_branch": inner, "else_branch": leaf("e")}}},
		}
		model, err := g.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return model
	}
	if _, err := Append(nested(maxGraphDepth+1), []string{"features"}, newHead()); err == nil || !strings.Contains(err.Error(), "nested") {
		t.Errorf("subgraphs %d deep: %v", maxGraphDepth+2, err)
	}
	m, err := parseModel(nested(3))
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Compact(slices.Sorted(slices.Values(m.nodes[0].outer))); !slices.Equal(got, []string{"cond", "x"}) {
		t.Errorf("three Ifs nested in the top one's branch read %q from outside, want cond and x", got)
	}
}

// A model whose nodes are not listed in topological order (ONNX Runtime
// sorts them itself, so the model runs): the nodes that compute what the
// head reads are kept wherever they are listed.
func TestAppendNodesOutOfOrder(t *testing.T) {
	g := &Graph{
		Inputs:       []Value{fv("x", -1, 4)},
		Outputs:      []Value{fv("logits", -1, 2)},
		Initializers: []Tensor{{Name: "mean", Dims: []int64{4}, Floats: make([]float32, 4)}, {Name: "old_w", Dims: []int64{4, 2}, Floats: make([]float32, 8)}},
		Nodes: []Node{
			{Op: "Relu", Inputs: []string{"x_norm"}, Outputs: []string{"features"}},
			{Op: "MatMul", Inputs: []string{"features", "old_w"}, Outputs: []string{"logits"}},
			{Op: "Sub", Inputs: []string{"x", "mean"}, Outputs: []string{"x_norm"}}, // appended by an edit
		},
	}
	if outs := appendedOutputs(t, g); !slices.Contains(outs, "x_norm") || !slices.Contains(outs, "features") {
		t.Errorf("kept %q: want the Sub computing x_norm, listed last, and the Relu", outs)
	}
}
