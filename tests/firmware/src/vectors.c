/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Cortex-M vector table and reset handler. The linker script puts the input
 * section `.vectors` into `.isr_vector` (M4, at 0 in RETRAM) or
 * `.isr_vectors` (M33, M0+: ST's MP2 kernel boots from that section's address).
 */
#include <stdint.h>

typedef void (*vector_t)(void);

extern uint32_t __stack_top[];		/* linker script: end of data memory */
extern uint32_t __bss_start[], __bss_end[];

int main(void);

void Reset_Handler(void)
{
	/* Segments are loaded in place by the host: only .bss needs clearing. */
	for (volatile uint32_t *p = __bss_start; p < __bss_end; p++)
		*p = 0;
	main();
	for (;;)
		;
}

static void Default_Handler(void)
{
	for (;;)
		;
}

__attribute__((section(".vectors"), used))
static const vector_t vectors[16] = {
	(vector_t)__stack_top,	/* initial stack pointer */
	Reset_Handler,
	Default_Handler,	/* NMI */
	Default_Handler,	/* HardFault */
	Default_Handler,	/* MemManage (v7-M, v8-M Main) */
	Default_Handler,	/* BusFault */
	Default_Handler,	/* UsageFault */
	Default_Handler,	/* SecureFault (v8-M) */
	0, 0, 0,
	Default_Handler,	/* SVCall */
	Default_Handler,	/* DebugMonitor */
	0,
	Default_Handler,	/* PendSV */
	Default_Handler,	/* SysTick */
};
