package onnx_test

import (
	"bytes"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"

	"dcd/internal/onnx"
	"dcd/internal/ortrun"
)

// externalize moves every initializer's raw_data of model into one file,
// as PyTorch's exporter saves weights (external data in model.onnx.data),
// and returns the model that points there and the file.
func externalize(t *testing.T, model []byte, location string) (out, file []byte) {
	return externalizeAs(t, model, location, func(n int) int64 { return int64(n) })
}

// externalizeAs is externalize with each tensor's length written as
// length says, from its true one.
func externalizeAs(t *testing.T, model []byte, location string, length func(int) int64) (out, file []byte) {
	t.Helper()
	fields := func(msg []byte, fn func(num protowire.Number, typ protowire.Type, v, raw []byte)) {
		for len(msg) > 0 {
			num, typ, n := protowire.ConsumeTag(msg)
			m := protowire.ConsumeFieldValue(num, typ, msg[n:])
			if n < 0 || m < 0 {
				t.Fatal("not a protobuf message")
			}
			v := msg[n : n+m]
			if typ == protowire.BytesType {
				v, _ = protowire.ConsumeBytes(v)
			}
			fn(num, typ, v, msg[:n+m])
			msg = msg[n+m:]
		}
	}
	entry := func(k, v string) []byte {
		var e []byte
		e = protowire.AppendTag(e, 1, protowire.BytesType)
		e = protowire.AppendString(e, k)
		e = protowire.AppendTag(e, 2, protowire.BytesType)
		return protowire.AppendString(e, v)
	}
	message := func(b []byte, num protowire.Number, m []byte) []byte {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		return protowire.AppendBytes(b, m)
	}
	fields(model, func(num protowire.Number, typ protowire.Type, v, raw []byte) {
		if num != 7 {
			out = append(out, raw...)
			return
		}
		var graph []byte
		fields(v, func(num protowire.Number, typ protowire.Type, v, raw []byte) {
			if num != 5 {
				graph = append(graph, raw...)
				return
			}
			var tensor, data []byte
			fields(v, func(num protowire.Number, typ protowire.Type, v, raw []byte) {
				if num == 9 {
					data = v
				} else {
					tensor = append(tensor, raw...)
				}
			})
			file = append(file, make([]byte, 64-len(file)%64)...) // aligned, as exporters do
			tensor = message(tensor, 13, entry("location", location))
			tensor = message(tensor, 13, entry("offset", strconv.Itoa(len(file))))
			tensor = message(tensor, 13, entry("length", strconv.FormatInt(length(len(data)), 10)))
			tensor = protowire.AppendTag(tensor, 14, protowire.VarintType)
			tensor = protowire.AppendVarint(tensor, 1) // EXTERNAL
			file = append(file, data...)
			graph = message(graph, 5, tensor)
		})
		out = message(out, 7, graph)
	})
	return out, file
}

// A model whose weights are in a file beside it runs, once inlined, as it
// ran with them inside; one without external data comes back as it was;
// a missing or short file fails naming it.
func TestInline(t *testing.T) {
	initORT(t)
	model := classifier(t)
	ext, file := externalize(t, model, "clf.onnx.data")
	if _, _, err := ortrun.Describe(ext); err == nil {
		t.Fatal("ONNX Runtime loaded from memory a model whose weights are elsewhere: the test proves nothing")
	}
	reads := 0
	in, err := onnx.Inline(ext, func(loc string) ([]byte, error) {
		reads++
		if loc != "clf.onnx.data" {
			return nil, errors.New("no such file")
		}
		return file, nil
	})
	if err != nil || reads != 1 {
		t.Fatalf("Inline: %v after %d reads", err, reads)
	}
	x := make([]float32, 3*4)
	for i := range x {
		x[i] = float32(i)
	}
	logits := func(model []byte) []float32 {
		s, err := ortrun.NewSession("clf", model, []string{"x"}, []string{"logits"}, ortrun.Options{Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		res, err := s.Run(ortrun.Tensor{Shape: []int64{1, 3, 2, 2}, Floats: x})
		if err != nil {
			t.Fatal(err)
		}
		return res[0].Floats
	}
	if got, want := logits(in), logits(model); !slices.Equal(got, want) {
		t.Errorf("inlined model gives %v, the model %v", got, want)
	}

	if same, err := onnx.Inline(model, nil); err != nil || !bytes.Equal(same, model) {
		t.Errorf("a model without external data: %v, changed %v", err, !bytes.Equal(same, model))
	}
	for name, read := range map[string]func(string) ([]byte, error){
		"missing": func(string) ([]byte, error) { return nil, errors.New("not found") },
		"short":   func(string) ([]byte, error) { return file[:len(file)-1], nil },
	} {
		if _, err := onnx.Inline(ext, read); err == nil || !strings.Contains(err.Error(), "clf.onnx.data") {
			t.Errorf("%s external data: %v, want an error naming it", name, err)
		}
	}
	// Tensors that say they hold more than a model loaded from memory
	// may: refused before a byte of them is read.
	for _, n := range []int64{1 << 31, math.MaxInt64} {
		huge, _ := externalizeAs(t, model, "clf.onnx.data", func(int) int64 { return n })
		reads = 0
		if _, err := onnx.Inline(huge, func(string) ([]byte, error) { reads++; return file, nil }); !errors.Is(err, onnx.ErrTooLarge) || reads != 0 {
			t.Errorf("a model declaring tensors of %d bytes: %v after %d reads, want ErrTooLarge before any", n, err, reads)
		}
	}
}
