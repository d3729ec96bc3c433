// clln potentiometer controller — reference firmware (protocol: ../PROTOCOL.md, v1.0).
// Board: Arduino Mega 2560 (enough pins for one chip-select per pot).
// Parts: MCP4131 (7-bit + 1, 129 taps, SPI mode 0,0, SDI/SDO multiplexed) in rheostat mode.
#include <SPI.h>
#include "potbank_protocol.h"

const uint16_t N_POTS = 16;
const uint16_t N_TAPS = 129;
const uint8_t CS_PINS[N_POTS] = {22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37};
const SPISettings MCP4131_SPI(1000000, MSBFIRST, SPI_MODE0);

// MCP4131 commands on volatile wiper 0 (address 0x0): 16-bit write = AD3..0 C1..0 D9..D0,
// C = 00 write, 11 read; a read returns the 9-bit wiper value in the low bits.
void write_tap(uint16_t pot, uint16_t tap) {
  SPI.beginTransaction(MCP4131_SPI);
  digitalWrite(CS_PINS[pot], LOW);
  SPI.transfer16((0x0 << 12) | (0b00 << 10) | (tap & 0x1FF));
  digitalWrite(CS_PINS[pot], HIGH);
  SPI.endTransaction();
}

int32_t read_tap(uint16_t pot) {
  SPI.beginTransaction(MCP4131_SPI);
  digitalWrite(CS_PINS[pot], LOW);
  uint16_t r = SPI.transfer16((0x0 << 12) | (0b11 << 10) | 0x3FF);
  digitalWrite(CS_PINS[pot], HIGH);
  SPI.endTransaction();
  return r & 0x1FF;
}

void send(const uint8_t* data, uint16_t n) { Serial.write(data, n); }
uint32_t now_ms() { return millis(); }

potbank::Controller<N_POTS>* controller;

void setup() {
  for (uint16_t i = 0; i < N_POTS; i++) { pinMode(CS_PINS[i], OUTPUT); digitalWrite(CS_PINS[i], HIGH); }
  SPI.begin();
  Serial.begin(115200);
  static potbank::Controller<N_POTS> c({write_tap, read_tap, send, now_ms}, N_TAPS,
                                       "clln potbank MCP4131x16");
  controller = &c;  // constructed after SPI is up: parks every pot
}

void loop() {
  while (Serial.available()) controller->receive((uint8_t)Serial.read());
  controller->tick();
}
