package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"unicode"
)

// checkJSONKeys refuses what encoding/json takes silently in the first
// JSON value of b, decoded into a value of type t: a key given twice in
// one object (the last would win) and a key that names a field only when
// its case is ignored ("Error_Domain" for error_domain), as YAML loading
// refuses both. It walks objects, arrays and maps (whose keys are the
// user's names, compared as written) by the tokens of the text. Text that
// is not JSON is left to the decoder to report.
func checkJSONKeys(b []byte, t reflect.Type) error {
	w := keyWalker{dec: json.NewDecoder(bytes.NewReader(b)), text: b}
	w.dec.UseNumber()
	if err := w.value("", t); err != nil && !errors.Is(err, errNotJSON) {
		return err
	}
	return nil
}

var errNotJSON = errors.New("not JSON")

type keyWalker struct {
	dec  *json.Decoder
	text []byte
}

func (w keyWalker) token() (json.Token, error) {
	tok, err := w.dec.Token()
	if err != nil {
		return nil, errNotJSON
	}
	return tok, nil
}

// line is the line of the text the decoder has read up to.
func (w keyWalker) line() int {
	off := min(int(w.dec.InputOffset()), len(w.text))
	return 1 + bytes.Count(w.text[:off], []byte("\n"))
}

// value reads one value at path, whose Go type is t (nil: any).
func (w keyWalker) value(path string, t reflect.Type) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != nil && (t.Implements(jsonUnmarshaler) || reflect.PointerTo(t).Implements(jsonUnmarshaler)) {
		t = nil // its own shape: still no key twice
	}
	tok, err := w.token()
	if err != nil {
		return err
	}
	switch tok {
	case json.Delim('['):
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i := 0; w.dec.More(); i++ {
			if err := w.value(fmt.Sprintf("%s[%d]", path, i), elem); err != nil {
				return err
			}
		}
		_, err = w.token() // ]
		return err
	case json.Delim('{'):
		var fields map[string]reflect.Type
		var elem reflect.Type
		switch {
		case t == nil:
		case t.Kind() == reflect.Struct:
			fields = map[string]reflect.Type{}
			jsonFields(t, fields)
		case t.Kind() == reflect.Map:
			elem = t.Elem()
		}
		seen := map[string]bool{}
		for w.dec.More() {
			tok, err := w.token()
			if err != nil {
				return err
			}
			key, _ := tok.(string)
			at := key
			if path != "" {
				at = path + "." + key
			}
			if seen[key] {
				return fmt.Errorf("line %d: %s: the key is given twice (JSON would keep the last silently); give it once", w.line(), at)
			}
			seen[key] = true
			vt := elem
			if fields != nil {
				ft, ok := fields[key]
				if !ok {
					for name := range fields {
						if foldKey(name) == foldKey(key) {
							return fmt.Errorf("line %d: %s: keys are case-sensitive: write %q", w.line(), at, name)
						}
					}
				}
				vt = ft // an unknown key: the decoder refuses it
			}
			if err := w.value(at, vt); err != nil {
				return err
			}
		}
		_, err = w.token() // }
		return err
	}
	return nil
}

var jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()

// jsonFields adds the JSON names of struct t's fields, as encoding/json
// names them, with their types.
func jsonFields(t reflect.Type, fields map[string]reflect.Type) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				jsonFields(ft, fields) // promoted, as encoding/json does
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
}

// foldKey is a key as encoding/json matches it to a field's name: case
// folded, so "ſ" is "s" and "K" (Kelvin) is "k".
func foldKey(s string) string {
	return strings.Map(func(r rune) rune { return unicode.ToUpper(unicode.ToLower(r)) }, s)
}
