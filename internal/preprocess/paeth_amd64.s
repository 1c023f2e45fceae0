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

// func paethRowsAVX(c0, c1, p *byte, n, bpp int) int
//
// Reverses the Paeth filter on two rows, c0 (p above it) and c1 below it,
// n bytes each, for bpp 3 or 4: at each step, pixel x of c0 and pixel x-1
// of c1, whose pixels above and above-left are c0's x-1 and x-2, already
// in registers. The two chains do not wait on each other, so the vector
// unit runs them side by side. c0's pixel 0 must be done; the steps go on
// while a 4-byte load at x stays within n. It returns that x: c0 is done
// before it, c1 before x-bpp. A chain is paethSSE2's in AVX's three-operand
// forms, with PABSW and PBLENDVB, and its sum taken in bytes (VPADDB),
// which wraps each lane's low byte and leaves its high byte zero.
TEXT ·paethRowsAVX(SB), NOSPLIT, $0-48
	MOVQ c0+0(FP), DI
	MOVQ c1+8(FP), R8
	MOVQ p+16(FP), SI
	MOVQ n+24(FP), CX
	MOVQ bpp+32(FP), DX
	SUBQ $4, CX              // last offset a 4-byte load may start at
	MOVQ DX, AX              // x: c0's pixel 0 is done
	VPXOR X15, X15, X15      // zero
	VMOVD (DI), X0           // c0's a: its pixel x-1
	VPUNPCKLBW X15, X0, X0
	VMOVD (SI), X1           // c0's c: p's pixel x-1
	VPUNPCKLBW X15, X1, X1
	VPXOR X8, X8, X8         // c1's a: its pixel x-2, none yet
	VPXOR X9, X9, X9         // c1's c: c0's pixel x-2, none yet

loop:
	CMPQ AX, CX
	JGT  done
	MOVQ AX, R9
	SUBQ DX, R9              // x-1's offset, c1's pixel
	VMOVDQA X0, X10          // c1's b: c0's pixel x-1
	VMOVD (SI)(AX*1), X2     // c0's b: p's pixel x
	VPUNPCKLBW X15, X2, X2

	// c0's pixel x: a X0, b X2, c X1.
	VPSUBW X1, X2, X3        // b-c
	VPSUBW X1, X0, X4        // a-c
	VPADDW X3, X4, X5        // a+b-2c
	VPABSW X3, X3            // pa
	VPABSW X4, X4            // pb
	VPABSW X5, X5            // pc
	VPCMPGTW X5, X4, X6      // pb > pc
	VPBLENDVB X6, X1, X2, X6 // c if pb > pc, else b: pred unless a wins
	VPCMPGTW X4, X3, X4      // pa > pb
	VPCMPGTW X5, X3, X5      // pa > pc
	VPOR X4, X5, X5          // a loses
	VPBLENDVB X5, X6, X0, X3 // pred
	VMOVD (DI)(AX*1), X4     // the filtered pixel
	VPUNPCKLBW X15, X4, X4
	VPADDB X4, X3, X0        // pred + filtered, mod 256: the next pixel's a
	VMOVDQA X2, X1           // and c

	// c1's pixel x-1: a X8, b X10, c X9.
	VPSUBW X9, X10, X11
	VPSUBW X9, X8, X12
	VPADDW X11, X12, X13
	VPABSW X11, X11
	VPABSW X12, X12
	VPABSW X13, X13
	VPCMPGTW X13, X12, X14
	VPBLENDVB X14, X9, X10, X14
	VPCMPGTW X12, X11, X12
	VPCMPGTW X13, X11, X13
	VPOR X12, X13, X13
	VPBLENDVB X13, X14, X8, X11
	VMOVD (R8)(R9*1), X12
	VPUNPCKLBW X15, X12, X12
	VPADDB X12, X11, X8
	VMOVDQA X10, X9

	VPACKUSWB X0, X0, X3
	VMOVD X3, BX
	VPACKUSWB X8, X8, X11
	VMOVD X11, R10
	CMPQ DX, $3
	JEQ  three
	MOVL BX, (DI)(AX*1)
	MOVL R10, (R8)(R9*1)
	ADDQ $4, AX
	JMP  loop

three:
	MOVW BX, (DI)(AX*1)
	SHRL $16, BX
	MOVB BX, 2(DI)(AX*1)
	MOVW R10, (R8)(R9*1)
	SHRL $16, R10
	MOVB R10, 2(R8)(R9*1)
	ADDQ $3, AX
	JMP  loop

done:
	MOVQ AX, ret+40(FP)
	RET
