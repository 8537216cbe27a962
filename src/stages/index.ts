/** The build's stages, in the order they run. */
import type { Stage } from '../pipeline/stage.js';
import { bootloaderStage } from './bootloader.js';
import { bootstrapStage } from './bootstrap.js';
import { configureStage } from './configure.js';
import { encryptStage } from './encrypt.js';
import { exportStage } from './export.js';
import { initramfsStage } from './initramfs.js';
import { nbdeStage } from './nbde.js';
import { partitionStage } from './partition.js';

export const STAGES: readonly Stage[] = [bootstrapStage, configureStage, initramfsStage, partitionStage, encryptStage, nbdeStage, bootloaderStage, exportStage];
