//go:build !purego

#include "textflag.h"

// func paethSSE2(c, p *byte, n, bpp int) int
//
// Reverses the Paeth filter on the pixels of c (n bytes, p the row above)
// for bpp 3 or 4, a pixel at a time with its channels in the lanes of one
// register (SSE2, every amd64 has it), while a 4-byte load stays within n.
// It returns how many bytes it unfiltered.
TEXT ·paethSSE2(SB), NOSPLIT, $0-40
	MOVQ c+0(FP), DI
	MOVQ p+8(FP), SI
	MOVQ n+16(FP), CX
	MOVQ bpp+24(FP), DX
	SUBQ $4, CX           // last offset a 4-byte load may start at
	XORQ AX, AX
	PXOR X7, X7           // zero
	PXOR X0, X0           // a: the pixel to the left, unfiltered (16-bit lanes)
	PXOR X1, X1           // c: the pixel above-left
	PCMPEQW X15, X15
	PSRLW $8, X15         // 0x00ff in every lane

loop:
	CMPQ AX, CX
	JGT  done
	MOVL (SI)(AX*1), X2   // b: the pixel above
	PUNPCKLBW X7, X2
	MOVL (DI)(AX*1), X6   // the filtered pixel
	PUNPCKLBW X7, X6

	MOVO X2, X3
	PSUBW X1, X3          // b-c
	MOVO X0, X4
	PSUBW X1, X4          // a-c
	MOVO X3, X5
	PADDW X4, X5          // a+b-2c

	PXOR X8, X8
	PSUBW X3, X8
	PMAXSW X8, X3         // pa = |b-c| = |p-a|
	PXOR X8, X8
	PSUBW X4, X8
	PMAXSW X8, X4         // pb = |a-c| = |p-b|
	PXOR X8, X8
	PSUBW X5, X8
	PMAXSW X8, X5         // pc = |a+b-2c| = |p-c|

	MOVO X4, X9
	PCMPGTW X5, X9        // pb > pc
	MOVO X1, X10
	PAND X9, X10          // c where pb > pc
	MOVO X9, X11
	PANDN X2, X11         // b where pb <= pc
	POR X10, X11          // pred, unless a wins

	MOVO X3, X12
	PCMPGTW X4, X12       // pa > pb
	MOVO X3, X13
	PCMPGTW X5, X13       // pa > pc
	POR X13, X12          // a loses
	PAND X12, X11
	MOVO X12, X13
	PANDN X0, X13         // a where it wins
	POR X13, X11          // pred

	PADDW X6, X11
	PAND X15, X11         // (pred + filtered) mod 256
	MOVO X11, X0          // the next pixel's left
	MOVO X2, X1           // and above-left
	PACKUSWB X11, X11
	MOVL X11, BX
	CMPQ DX, $3
	JEQ  three
	MOVL BX, (DI)(AX*1)
	ADDQ $4, AX
	JMP  loop

three:
	MOVW BX, (DI)(AX*1)
	SHRL $16, BX
	MOVB BX, 2(DI)(AX*1)
	ADDQ $3, AX
	JMP  loop

done:
	MOVQ AX, ret+32(FP)
	RET
