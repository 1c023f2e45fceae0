package onnx

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"

	"dcd/internal/ortrun"
)

// Tensors outside the main graph's initializers keep their data outside
// too when onnx.save is told so (a Constant's value with
// convert_attribute, an If branch's initializers always): inlined, the
// model runs as it did with them inside.
func TestInlineNested(t *testing.T) {
	if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
		t.Fatalf("%v (run `make setup`)", err)
	}
	branch := func(name string, v []float32) *Graph {
		return &Graph{
			Name:         name,
			Outputs:      []Value{{Name: name + "_out", Elem: Float, Shape: []int64{2}}},
			Initializers: []Tensor{{Name: name + "_w", Dims: []int64{2}, Floats: v}},
			Nodes:        []Node{{Op: "Identity", Inputs: []string{name + "_w"}, Outputs: []string{name + "_out"}}},
		}
	}
	model, err := (&Graph{
		Name:    "nested",
		Inputs:  []Value{{Name: "x", Elem: Float, Shape: []int64{-1, 2}}},
		Outputs: []Value{{Name: "y", Elem: Float, Shape: []int64{-1, 2}}},
		Nodes: []Node{
			{Op: "Constant", Outputs: []string{"k"}, Attrs: map[string]any{"value": Tensor{Name: "k", Dims: []int64{2}, Floats: []float32{3, 4}}}},
			{Op: "Constant", Outputs: []string{"one"}, Attrs: map[string]any{"value": Tensor{Name: "one", Dims: []int64{}, Floats: []float32{1}}}},
			{Op: "Cast", Inputs: []string{"one"}, Outputs: []string{"cond"}, Attrs: map[string]any{"to": int64(9)}}, // BOOL
			{Op: "If", Inputs: []string{"cond"}, Outputs: []string{"branch"}, Attrs: map[string]any{
				"then_branch": branch("then", []float32{10, 20}), "else_branch": branch("else", []float32{-1, -1})}},
			{Op: "Mul", Inputs: []string{"x", "k"}, Outputs: []string{"xk"}},
			{Op: "Add", Inputs: []string{"xk", "branch"}, Outputs: []string{"y"}},
		},
	}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// Every tensor's data moved to one file, as onnx.save does.
	var file []byte
	moved := 0
	external, err := rewriteAll(model, func(tensor []byte) ([]byte, error) {
		var out, data []byte
		walkFields(tensor, func(num protowire.Number, _ protowire.Type, v, raw []byte) error {
			if num == 9 { // raw_data
				data = v
			} else {
				out = append(out, raw...)
			}
			return nil
		})
		entry := func(k, v string) []byte { return appendString(appendString(nil, 1, k), 2, v) }
		out = appendMessage(out, 13, entry("location", "nested.onnx.data"))
		out = appendMessage(out, 13, entry("offset", strconv.Itoa(len(file))))
		out = appendMessage(out, 13, entry("length", strconv.Itoa(len(data))))
		out = protowire.AppendTag(out, 14, protowire.VarintType)
		out = protowire.AppendVarint(out, 1) // EXTERNAL
		file = append(file, data...)
		moved++
		return out, nil
	})
	if err != nil || moved != 4 {
		t.Fatalf("externalizing: %v, %d tensors moved, want 4", err, moved)
	}
	run := func(model []byte) ([]float32, error) {
		s, err := ortrun.NewSession("nested", model, []string{"x"}, []string{"y"}, ortrun.Options{Threads: 1})
		if err != nil {
			return nil, err
		}
		defer s.Close()
		res, err := s.Run(ortrun.Tensor{Shape: []int64{1, 2}, Floats: []float32{1, 2}})
		if err != nil {
			return nil, err
		}
		return res[0].Floats, nil
	}
	if _, err := run(external); err == nil {
		t.Fatal("ONNX Runtime ran from memory a model whose tensors are elsewhere: the test proves nothing")
	}
	in, err := Inline(external, func(string) ([]byte, error) { return file, nil })
	if err != nil {
		t.Fatal(err)
	}
	got, err := run(in)
	if want := []float32{13, 28}; err != nil || !slices.Equal(got, want) {
		t.Errorf("inlined: %v, %v; want %v", got, err, want)
	}
}

// nested are the places of this test's model's tensors, from ONNX's
// schema: the graph's initializers (5) and nodes (1), a node's attributes
// (5), an attribute's tensor (5) and graph (6).
var nested = map[msgKind]map[protowire.Number]msgKind{
	graphMsg: {5: tensorMsg, 1: nodeMsg}, nodeMsg: {5: attributeMsg}, attributeMsg: {5: tensorMsg, 6: graphMsg},
}

// rewriteAll is rewriteTensors over a model's graph, where nested says.
func rewriteAll(model []byte, fn func([]byte) ([]byte, error)) ([]byte, error) {
	var out []byte
	err := walkFields(model, func(num protowire.Number, typ protowire.Type, v, raw []byte) error {
		if num != 7 {
			out = append(out, raw...)
			return nil
		}
		g, err := rewriteTensors(nil, v, graphMsg, nested, fn)
		out = appendMessage(out, 7, g)
		return err
	})
	return out, err
}

// A model of subgraphs nested past any real one's is refused by Inline,
// which reads every model first, before its recursion could overflow the
// stack (a fatal error, at a million levels, that no recover catches).
func TestInlineTooDeep(t *testing.T) {
	inner := &Graph{Nodes: []Node{{Op: "Identity", Inputs: []string{"x"}, Outputs: []string{"y"}}}, Outputs: []Value{fv("y", -1, 4)}}
	for i := range 2 * maxGraphDepth {
		out := fmt.Sprintf("y%d", i)
		inner = &Graph{Nodes: []Node{{Op: "If", Inputs: []string{"cond"}, Outputs: []string{out}, Attrs: map[string]any{"then_branch": inner}}},
			Outputs: []Value{fv(out, -1, 4)}}
	}
	g := &Graph{Inputs: []Value{fv("x", -1, 4)}, Outputs: []Value{fv("y0", -1, 4)},
		Nodes: []Node{{Op: "If", Inputs: []string{"cond"}, Outputs: []string{"features"}, Attrs: map[string]any{"then_branch": inner}}}}
	model, err := g.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Inline(model, func(string) ([]byte, error) { return nil, nil }); !errors.Is(err, errTooDeep) {
		t.Errorf("Inline of subgraphs %d deep: %v, want errTooDeep", 2*maxGraphDepth, err)
	}
}
